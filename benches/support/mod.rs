//! What every benchmark prints beside its numbers.

/// The CPU's model and the flags that decide its speed (AVX2, AVX-512, AVX512-BF16, AMX-BF16):
/// CPUs differ between machines, and a ratio means little without them.
pub fn cpu_line() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|line| line.strip_prefix("model name")).map(|rest| rest.trim_start_matches([' ', '\t', ':'])).unwrap_or("?");
    let flags: Vec<&str> = info
        .lines()
        .find_map(|line| line.strip_prefix("flags"))
        .map(|rest| rest.split_whitespace().filter(|flag| ["avx2", "avx512f", "amx_bf16", "avx512_bf16"].contains(flag)).collect())
        .unwrap_or_default();
    format!("{model}, {} cores, flags {}", std::thread::available_parallelism().map_or(0, |n| n.get()), flags.join(" "))
}
