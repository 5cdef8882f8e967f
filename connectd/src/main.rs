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
/// overrides them). Freed pages go back to the OS 1 s after they were last used instead of
/// jemalloc's 10 s, a trade between memory and CPU measured both ways:
/// * a 6-slot redis_dedup over a 1M backlog at ~300k records/s (batches freed and
///   reallocated continuously): peak RSS 147–149 MB with 1 s, 152 MB with 2 s, ~157 MB with
///   10 s, ~132 MB with 200 ms;
/// * HTTP → redis_dedup → postgres_sink under full load: with 200 ms jemalloc returned and
///   re-faulted pages all the time (~13k page faults and ~1k `madvise` calls a second, each
///   `madvise` a TLB shoot-down across the threads) and connectd spent ~15–20% more CPU per
///   event than with 2 s; 1 s and 2 s were within noise of each other in paired runs;
/// * 0 ms cost ~45% more CPU.
#[allow(unsafe_code)] // an exported name on a plain static: nothing unsafe is executed
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    connectd::cli::main(Registry::builtin())
}
