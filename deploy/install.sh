#!/usr/bin/env bash
# Installs trainq on the box, as root, idempotently (a second run changes nothing):
#   - the system user `trainq`;
#   - the binaries under /opt/trainq/bin (and /usr/local/bin/trainq, the admin's and students' client);
#   - libtorch under /opt/trainq/torch (copied, or with --libtorch DIR a link to an existing install);
#   - /etc/trainq/trainq.toml (an existing one is kept), /var/lib/trainq (the data);
#   - the systemd unit /etc/systemd/system/trainq.service, enabled and started;
#   - the first admin, `admin`, whose token is printed once.
#
#   sudo deploy/install.sh [--bin DIR] [--libtorch DIR]   # DIR defaults: target/release, the repo's .libtorch
#   sudo deploy/install.sh --uninstall                     # removes everything but the data (/var/lib/trainq)
#   deploy/install.sh --root /tmp/scratch …               # into a scratch root, for the test: no user is
#                                                          # created, files belong to whoever runs it, the
#                                                          # config's paths lie under the root, systemd is not touched
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=""
bin="$repo/target/release"
libtorch=""
link_libtorch=false
uninstall=false
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=$(realpath -m "$2"); shift 2 ;;
        --bin) bin=$(realpath "$2"); shift 2 ;;
        --libtorch) libtorch=$(realpath "$2"); link_libtorch=true; shift 2 ;;
        --uninstall) uninstall=true; shift ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

opt="$root/opt/trainq"
etc="$root/etc/trainq"
data="$root/var/lib/trainq"
unit="$root/etc/systemd/system/trainq.service"
link="$root/usr/local/bin/trainq"
# systemd only on the real host: a scratch root is for the test.
real_host=$([ -z "$root" ] && command -v systemctl >/dev/null && echo true || echo false)

if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (or with --root DIR for a scratch install)" >&2
    exit 1
fi

if $uninstall; then
    if $real_host; then
        systemctl disable --now trainq.service 2>/dev/null || true
    fi
    rm -f "$unit" "$link" "$etc/trainq.toml"
    rmdir "$etc" 2>/dev/null || true
    rm -rf "$opt"
    if $real_host; then
        systemctl daemon-reload
    fi
    echo "trainq removed; the data stays in $data$([ -z "$root" ] && echo " (and the user trainq, who owns it)")"
    exit 0
fi

for program in trainq trainq-worker; do
    if [ ! -x "$bin/$program" ]; then
        echo "install.sh: no $bin/$program; build first: cargo build --release --bins (or --bin DIR)" >&2
        exit 1
    fi
done
if [ -z "$libtorch" ]; then
    libtorch=$(realpath "$repo/.libtorch" 2>/dev/null || true)
fi
if [ ! -d "$libtorch/lib" ]; then
    echo "install.sh: no libtorch at ${libtorch:-$repo/.libtorch} (a folder with lib/); run deploy/setup-libtorch.sh or give --libtorch DIR" >&2
    exit 1
fi

# The user that runs the server; a scratch root uses whoever runs the script.
if [ -z "$root" ]; then
    owner=trainq
    if ! id -u trainq >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/trainq --shell /usr/sbin/nologin --user-group trainq
    fi
else
    owner=$(id -un)
fi

install -d -m 0755 "$opt" "$opt/bin" "$etc" "$(dirname "$unit")" "$(dirname "$link")"
install -d -m 0750 -o "$owner" -g "$(id -gn "$owner")" "$data" "$data/datasets" "$data/weights"
# `install -C` leaves a file that is already the same untouched (its time too).
install -C -m 0755 "$bin/trainq" "$bin/trainq-worker" "$opt/bin/"
if [ "$(readlink "$link" || true)" != /opt/trainq/bin/trainq ]; then
    ln -sfn /opt/trainq/bin/trainq "$link"
fi

# libtorch: with --libtorch a link to that install; else a copy of the repo's, made once (4.6 GB;
# a copy already there is kept, so a second run copies nothing).
if $link_libtorch; then
    if [ "$(readlink "$opt/torch" || true)" != "$libtorch" ]; then
        rm -rf "$opt/torch"
        ln -sfn "$libtorch" "$opt/torch"
    fi
elif [ ! -d "$opt/torch" ] || [ -L "$opt/torch" ]; then
    rm -rf "$opt/torch" "$opt/torch.partial"
    cp -a "$libtorch" "$opt/torch.partial"
    mv "$opt/torch.partial" "$opt/torch"
fi

# The config: the shipped example with this install's paths; one already there is the admin's.
if [ ! -e "$etc/trainq.toml" ]; then
    sed -e "s|^data_dir = .*|data_dir = \"$data\"|" \
        -e "s|^datasets = .*|datasets = \"$data/datasets\"|" \
        -e "s|^weights = .*|weights = \"$data/weights\"|" \
        -e "s|^worker = .*|worker = \"$root/opt/trainq/bin/trainq-worker\"|" \
        "$repo/deploy/trainq.toml" > "$etc/trainq.toml.new"
    chmod 0644 "$etc/trainq.toml.new"
    mv "$etc/trainq.toml.new" "$etc/trainq.toml"
fi

# The unit, as the host sees it (paths without the scratch root).
install -C -m 0644 "$repo/deploy/trainq.service" "$unit"

# The first admin, once: `trainq user add` prints the token, which is never shown again. A
# database already there has its users (the check opens nothing, so a second run changes
# nothing); it runs as the server's user, so the database it creates is the server's.
run_as=()
if [ -z "$root" ]; then
    run_as=(runuser -u trainq --)
fi
if [ ! -e "$data/trainq.db" ]; then
    token=$("${run_as[@]}" "$opt/bin/trainq" user add admin --admin --data-dir "$data")
    echo "the first admin is \`admin\`; their token (shown once, keep it):"
    echo "$token"
fi

if $real_host; then
    systemctl daemon-reload
    systemctl enable --now trainq.service
    echo "trainq is running: systemctl status trainq; the config is /etc/trainq/trainq.toml"
fi
