use connectd::Builtin;
use connector_core::Registry;

/// jemalloc instead of glibc malloc: records are many small short-lived allocations freed on
/// other threads than the one that made them; glibc's allocator spent ~25% of the CPU of a
/// dedup pipeline (profiled with `perf`), mimalloc ~10–20% zeroing fresh pages it had just
/// returned to the OS. jemalloc keeps freed pages for reuse.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    connectd::cli::main(Registry::builtin())
}
