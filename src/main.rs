//! The `vitnas` command line: parses arguments and calls the library.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

fn main() -> std::process::ExitCode {
    cli::allocator::tune_mimalloc();
    cli::threads::keep_candle_elementwise_on_caller();
    let args = cli::Cli::parse();
    if let Err(e) = vitnas::engine::simd::check_env() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    cli::init_logging(args.verbose);
    // One process, or the ranks of an `mpirun` job.
    let world = match cli::world::World::from_env() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = cli::run(args, &world);
    world.finish(result)
}
