//! What a failed job reports: out of memory (so the student can shrink the batch or the image
//! size, and the server can say so) or any other error, in libtorch's own words.

use trainq::domain::worker_protocol::FailureKind;

/// Words libtorch and the allocators use when an allocation fails: CUDA's caching allocator
/// ("CUDA out of memory", `OutOfMemoryError`), the CPU allocator under a memory limit
/// ("DefaultCPUAllocator: can't allocate memory" / "not enough memory"), C++'s `std::bad_alloc`,
/// cuBLAS's workspace, and `ENOMEM`'s text.
const OUT_OF_MEMORY_MARKERS: [&str; 7] = [
    "out of memory",
    "outofmemoryerror",
    "can't allocate memory",
    "not enough memory",
    "bad_alloc",
    "cannot allocate memory",
    "cublas_status_alloc_failed",
];

/// Sorts a failure by its message.
pub fn kind(message: &str) -> FailureKind {
    let lower = message.to_lowercase();
    if OUT_OF_MEMORY_MARKERS.iter().any(|marker| lower.contains(marker)) {
        FailureKind::OutOfMemory
    } else {
        FailureKind::Error
    }
}

/// Prints an out-of-memory panic as one short line, without the backtrace `RUST_BACKTRACE` asks
/// for: resolving a backtrace's symbols allocates a lot, and under a memory limit that allocation
/// fails too and the process hangs instead of reporting. Other panics print as before.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = panic_text(info.payload());
        if kind(&text) == FailureKind::OutOfMemory {
            let location = info.location().map(|at| format!(" at {at}")).unwrap_or_default();
            eprintln!("panicked{location}: {}", message(&text));
        } else {
            default(info);
        }
    }));
}

/// The text of a panic payload (a `&str` or a `String`, as `panic!` makes them).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| String::from("panic without a message"))
}

/// libtorch's message out of a panic or error text: tch's non-`f_` methods panic with
/// `` called `Result::unwrap()` on an `Err` value: Torch("…") ``, the message Debug-escaped;
/// the C++ stack trace libtorch appends ("Exception raised from …", "frame #0: …") is dropped.
pub fn message(text: &str) -> String {
    let message = match text.split_once("Torch(\"") {
        Some((_, quoted)) => unescape(quoted.strip_suffix("\")").unwrap_or(quoted)),
        None => text.to_string(),
    };
    let message = message.split("Exception raised from").next().unwrap_or_default();
    let message = message.split("\nframe #").next().unwrap_or_default();
    message.trim().to_string()
}

/// Undoes Rust's Debug escaping of a string (`\n`, `\"`, `\\`, `\t`, `\'`).
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_failures_are_out_of_memory_and_the_rest_are_errors() {
        let cases = [
            (
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB",
                FailureKind::OutOfMemory,
            ),
            ("torch.OutOfMemoryError: CUDA out of memory.", FailureKind::OutOfMemory),
            (
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4294967296 bytes.",
                FailureKind::OutOfMemory,
            ),
            (
                "DefaultCPUAllocator: not enough memory: you tried to allocate 4294967296 bytes.",
                FailureKind::OutOfMemory,
            ),
            ("std::bad_alloc", FailureKind::OutOfMemory),
            ("loading the train split: no such file", FailureKind::Error),
            ("mat1 and mat2 shapes cannot be multiplied (2x512 and 256x1)", FailureKind::Error),
        ];
        for (text, expected) in cases {
            assert_eq!(kind(text), expected, "{text}");
        }
    }

    #[test]
    fn libtorchs_message_is_taken_out_of_tchs_panic_without_the_stack_trace() {
        let panic = "called `Result::unwrap()` on an `Err` value: Torch(\"DefaultCPUAllocator: not enough memory: you tried to allocate 4294967296 bytes.\\nException raised from alloc_cpu at /pytorch/c10/core/impl/alloc_cpu.cpp:124 (most recent call first):\\nframe #0: c10::Error::Error\")";
        assert_eq!(message(panic), "DefaultCPUAllocator: not enough memory: you tried to allocate 4294967296 bytes.");
        let enforce = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 805306368 bytes. Error code 12 (Cannot allocate memory)\\nframe #0: c10::ThrowEnforceNotMet(char const*, int, char const*)\\nframe #1: x\")";
        assert_eq!(
            message(enforce),
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 805306368 bytes. Error code 12 (Cannot allocate memory)"
        );
        assert_eq!(message("loading the train split: \"x\" is gone"), "loading the train split: \"x\" is gone");
    }
}
