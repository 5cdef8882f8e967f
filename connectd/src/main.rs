use connectd::Builtin;
use connector_core::Registry;

/// mimalloc instead of glibc malloc: records are many small short-lived allocations freed on
/// other threads than the one that made them, where glibc's allocator spent ~25% of the CPU
/// of a dedup pipeline (profiled with `perf`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    connectd::cli::main(Registry::builtin())
}
