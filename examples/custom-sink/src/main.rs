//! A connectd binary with the Redis leaderboard sink registered: same CLI as the stock one
//! (`connectd-custom plugins` lists `redis_leaderboard_sink`).
use connectd::Builtin;
use connector_core::Registry;

fn main() -> std::process::ExitCode {
    let mut registry = Registry::builtin();
    registry.register_sink::<redis_leaderboard_sink::RedisLeaderboardPlugin>();
    connectd::cli::main(registry)
}
