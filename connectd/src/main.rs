use connectd::Builtin;
use connector_core::Registry;

/// jemalloc instead of glibc malloc: records are many small short-lived allocations freed on
/// other threads than the one that made them; glibc's allocator spent ~25% of the CPU of a
/// dedup pipeline (profiled with `perf`), mimalloc ~10–20% zeroing fresh pages it had just
/// returned to the OS. jemalloc keeps freed pages for reuse.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read by jemalloc itself when it starts (the symbol tikv-jemalloc-sys
/// looks for, as its documentation shows; `_RJEM_MALLOC_CONF` in the environment still
/// overrides them). Freed pages go back to the OS 200 ms after they were last used instead of
/// jemalloc's 10 s: under a backlog a 6-slot redis_dedup frees and reallocates its batches
/// continuously, and its peak RSS was ~150 MB with the default, ~130 MB with 200 ms, at the
/// same CPU per record (0 ms cost ~45% more CPU).
#[allow(unsafe_code)] // an exported name on a plain static: nothing unsafe is executed
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:200,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    connectd::cli::main(Registry::builtin())
}
