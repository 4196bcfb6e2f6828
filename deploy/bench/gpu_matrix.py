#!/usr/bin/env python3
"""The assignment matrix through a real trainq server, timed stage by stage (issues 3 and 4).

Generates a Kaggle-sized chest-X-ray set (5,216 train + 16 val + 624 test films at --scale 1),
starts `trainq serve` on it, submits every assignment example from deploy/examples/ (weights
"random": no ImageNet download here; the arithmetic is the same), waits for them, and prints for
each job the time of every stage (pixel load, activation builds, phase 1, phase 2, the rest:
worker start, evaluation, Grad-CAM, checkpoints) and the job's wall time. With fewer epochs than
the assignment's (--epochs), it projects each job to the full epochs from its own per-epoch
times: the first epoch of a phase as measured (it pays cuDNN's autotuning), every later one at
the mean of the later measured epochs. Jobs run one after another by default
(--max-jobs-per-gpu 1), so the sum of their wall times is the GPU time of the matrix.

  python3 deploy/bench/gpu_matrix.py --trainq target/release/trainq --worker target/release/trainq-worker
  (--cpu to run it without a GPU, e.g. --scale 0.01 --jobs q1 --epochs 3,3 as a smoke test)

Only the standard library: it runs under whatever python3 a GPU machine has.
"""
import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MATRIX = ["q1", "q2", "q3-256", "q3-512", "qe1-gap", "qe3-inception-128", "qe3-inception-256"]
# Kaggle chest-xray-pneumonia's split sizes per class are uneven (1,341 / 3,875 train); the total
# is what costs time, so the bench splits it evenly.
TRAIN, VAL, TEST = 2608, 8, 312


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def generate(trainq, root, scale, size, procs):
    """Writes the dataset with `procs` parallel `trainq demo-data` runs, then merges them."""
    final = root / "datasets" / "chest_xray"
    if final.exists():
        return final
    per_class = {split: max(2, round(n * scale)) for split, n in (("train", TRAIN), ("val", VAL), ("test", TEST))}
    parts = []
    for i in range(procs):
        share = {split: n // procs + (1 if i < n % procs else 0) for split, n in per_class.items()}
        part = root / f"part{i}"
        parts.append(part)
        parts[-1] = (part, subprocess.Popen(
            [trainq, "demo-data", str(part), "--size", str(size), "--seed", str(100 + i),
             "--train-per-class", str(share["train"]), "--val-per-class", str(share["val"]),
             "--test-per-class", str(share["test"])], stdout=subprocess.DEVNULL))
    for part, process in parts:
        if process.wait() != 0:
            sys.exit(f"trainq demo-data failed for {part}")
    for i, (part, _) in enumerate(parts):
        for image in part.rglob("*.jpeg"):
            target = final / image.relative_to(part).parent / f"p{i}-{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.rename(target)
        shutil.rmtree(part)
    return final


class Api:
    def __init__(self, base, token):
        self.base, self.token = base, token

    def call(self, method, path, body=None):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            sys.exit(f"{method} {path}: {err.code} {err.read().decode(errors='replace')}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds_between(start, end):
    parse = lambda text: dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


def spec_for(name, epochs):
    spec = json.loads((EXAMPLES / f"{name}.json").read_text())
    spec["dataset"], spec["weights"] = "chest_xray", "random"
    full = [phase["epochs"] for phase in spec["phases"]]
    if epochs:
        for phase, n in zip(spec["phases"], epochs):
            phase["epochs"] = min(n, phase["epochs"])
    return spec, full


def stages(api, job_id, full_epochs):
    """One finished job's stage times, measured and projected to the full epochs."""
    job = api.call("GET", f"/api/jobs/{job_id}")
    rows = api.call("GET", f"/api/jobs/{job_id}/metrics")["epochs"]
    progress = job.get("progress") or {}
    data = sum(split.get("seconds", 0.0) for split in progress.get("data", {}).values())
    features = {int(phase): use for phase, use in progress.get("features", {}).items()}
    wall = seconds_between(job["started_at"], job["finished_at"])
    phases = []
    for phase, full in enumerate(full_epochs, start=1):
        epochs = [row["seconds"] for row in rows if row["phase"] == phase]
        later = epochs[1:] or epochs
        mean = sum(later) / len(later) if later else 0.0
        projected = (epochs[0] + (full - 1) * mean) if epochs else 0.0
        phases.append({"epochs": len(epochs), "seconds": sum(epochs), "first": epochs[0] if epochs else 0.0,
                       "later_mean": mean, "full_epochs": full, "projected": projected})
    built = sum(use.get("seconds", 0.0) for use in features.values())
    rest = wall - data - built - sum(p["seconds"] for p in phases)
    return {
        "id": job_id, "name": job["name"], "state": job["state"], "device": job.get("device"),
        "started_at": job["started_at"], "finished_at": job["finished_at"], "wall": wall, "data": data, "data_cache": sorted({s.get("cache") or "-" for s in progress.get("data", {}).values()}),
        "features": {p: (u.get("state"), u.get("seconds", 0.0), u.get("cut")) for p, u in sorted(features.items())},
        "phases": phases, "rest": rest,
        "projected": data + built + sum(p["projected"] for p in phases) + rest,
        "test_acc": (job.get("final_metrics") or {}).get("test_acc"), "error": job.get("error"),
    }


def line(s):
    parts = [f"{s['name']:<18} wall {s['wall']:6.1f}s | pixels {s['data']:5.1f}s ({'/'.join(s['data_cache'])})"]
    for phase, p in enumerate(s["phases"], start=1):
        state, secs, cut = s["features"].get(phase, ("-", 0.0, "-"))
        parts.append(f"acts{phase} {secs:5.1f}s ({state} @{cut}) | phase {phase}: {p['epochs']} ep {p['seconds']:6.1f}s "
                     f"(first {p['first']:.2f}s, then {p['later_mean']:.3f}s/ep)")
    parts.append(f"rest {s['rest']:5.1f}s | full {'+'.join(str(p['full_epochs']) for p in s['phases'])} epochs ≈ {s['projected']:6.1f}s")
    return " | ".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainq", default="target/release/trainq")
    ap.add_argument("--worker", default="target/release/trainq-worker")
    ap.add_argument("--root", default="/tmp/trainq-matrix")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of Kaggle's image count")
    ap.add_argument("--source-size", type=int, default=1024, help="nominal side of the generated films")
    ap.add_argument("--epochs", default="", help="e.g. 6,4: run fewer epochs per phase and project")
    ap.add_argument("--jobs", default=",".join(MATRIX))
    ap.add_argument("--max-jobs-per-gpu", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds after which the rest is cancelled")
    ap.add_argument("--second-student", action="store_true", help="then run the first job again as another user")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default=None, help="folder for the summary JSON and the server log")
    a = ap.parse_args()
    started = time.monotonic()
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    out = Path(a.out) if a.out else root
    out.mkdir(parents=True, exist_ok=True)
    trainq, worker = os.path.abspath(a.trainq), os.path.abspath(a.worker)
    epochs = [int(n) for n in a.epochs.split(",")] if a.epochs else []

    t = time.monotonic()
    dataset = generate(trainq, root, a.scale, a.source_size, min(os.cpu_count() or 1, 16))
    count = {split: sum(1 for _ in (dataset / split).rglob("*.jpeg")) for split in ("train", "val", "test")}
    print(f"dataset: {count} films of ~{a.source_size} px generated in {time.monotonic() - t:.0f}s", flush=True)

    data_dir = root / "data"
    tokens = {}
    for user, admin in (("teacher", True), ("student2", False)):
        file = root / f"token-{user}"
        if not file.exists():
            args = [trainq, "user", "add", user, "--data-dir", str(data_dir)] + (["--admin"] if admin else [])
            file.write_text(subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip())
        tokens[user] = file.read_text().strip()
    port = free_port()
    server_log = open(out / "server.log", "w")
    args = [trainq, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
            "--datasets", str(root / "datasets"), "--worker", worker,
            "--max-jobs-per-gpu", str(a.max_jobs_per_gpu), "--max-image-side", "1024"]
    args += ["--no-gpu", "--cpu-slots", "1"] if a.cpu else []
    server = subprocess.Popen(args, stdout=server_log, stderr=subprocess.STDOUT)
    api = Api(f"http://127.0.0.1:{port}", tokens["teacher"])
    for _ in range(100):
        try:
            urllib.request.urlopen(api.base + "/healthz", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    devices = api.call("GET", "/api/devices")
    print("devices:", json.dumps(devices), flush=True)
    if not a.cpu and not any(d.get("kind") == "gpu" for d in devices):
        server.terminate()
        sys.exit("the server found no GPU (NVML); see server.log, or pass --cpu")

    def run(names, client):
        submitted = []
        for name in names:
            spec, full = spec_for(name, epochs)
            job = client.call("POST", "/api/jobs", spec)
            submitted.append((job["id"], full))
        first_start = None
        while True:
            jobs = [client.call("GET", f"/api/jobs/{job_id}") for job_id, _ in submitted]
            if all(job["state"] in ("succeeded", "failed", "cancelled") for job in jobs):
                break
            if time.monotonic() - started > a.deadline:
                log("deadline: cancelling what is left")
                for job in jobs:
                    if job["state"] in ("queued", "running"):
                        client.call("POST", f"/api/jobs/{job['id']}/cancel")
                time.sleep(3)
                break
            time.sleep(1)
        results = []
        for job_id, full in submitted:
            job = client.call("GET", f"/api/jobs/{job_id}")
            if job["state"] != "succeeded":
                print(f"{job['name']}: {job['state']} {job.get('error') or ''}"[:2000], flush=True)
                continue
            s = stages(client, job_id, full)
            first_start = min(first_start or job["started_at"], job["started_at"])
            print(line(s), flush=True)
            results.append(s)
        return results

    results = run(a.jobs.split(","), api)
    done = [s["name"] for s in results]
    measured = sum(s["wall"] for s in results)
    projected = sum(s["projected"] for s in results)
    device = (devices[0].get("name") if isinstance(devices, list) and devices else None) or str(devices)[:80]
    if a.max_jobs_per_gpu == 1:
        print(f"matrix on {device}: {len(results)} jobs ({', '.join(done)}), one at a time: "
              f"measured {measured:.0f}s of job wall time"
              + (f" at {a.epochs} epochs; projected to the assignment's epochs: {projected:.0f}s = {projected / 60:.1f} min"
                 if epochs else ""), flush=True)
    elif results:
        # Sharing the GPU: the matrix holds it from the first start to the last finish. Each job's
        # projection uses its own epoch times under this sharing; as jobs finish, the others get
        # more of the GPU, so the projected makespan is an upper bound for jobs started together.
        first = min(s["started_at"] for s in results)
        makespan = max(seconds_between(first, s["finished_at"]) for s in results)
        projected_span = max(seconds_between(first, s["started_at"]) + s["projected"] for s in results)
        print(f"matrix on {device}: {len(results)} jobs ({', '.join(done)}), up to {a.max_jobs_per_gpu} at a time on the GPU: "
              f"makespan {makespan:.0f}s (job wall times add up to {measured:.0f}s)"
              + (f" at {a.epochs} epochs; projected makespan at the assignment's epochs: {projected_span:.0f}s = "
                 f"{projected_span / 60:.1f} min (jobs' projections add up to {projected / 60:.1f} min)" if epochs else ""), flush=True)
        projected = projected_span
    second = []
    if a.second_student and results:
        second = run([a.jobs.split(",")[0]], Api(api.base, tokens["student2"]))
    summary = {"devices": devices, "epochs": epochs, "jobs": results, "second_student": second,
               "measured_seconds": measured, "projected_seconds": projected}
    (out / "matrix.json").write_text(json.dumps(summary, indent=1))
    try:
        with urllib.request.urlopen(api.base + "/metrics", timeout=5) as response:
            (out / "prometheus.txt").write_bytes(response.read())
    except OSError as err:
        log(f"/metrics: {err}")
    server.terminate()
    server.wait(timeout=60)


if __name__ == "__main__":
    main()
