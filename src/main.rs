use clap::{Parser, Subcommand};
use nixoci::commands::{self, Format};
use nixoci::digest::DigestCache;
use std::path::PathBuf;

/// Mount Nix image descriptions as OCI image layouts; layer tars are made on read.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every description in --images as NAME/ (OCI layout), NAME.dir/ (skopeo dir:) and
    /// NAME.tar (docker-archive) under MOUNTPOINT, until SIGINT or SIGTERM.
    Mount {
        mountpoint: PathBuf,
        /// Directory of descriptions: files or symlinks named NAME or NAME.json
        #[arg(long)]
        images: PathBuf,
        /// Where computed layer digests are kept [default: $XDG_CACHE_HOME/nixoci or ~/.cache/nixoci]
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// FUSE worker threads
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Threads that compress gzip and zstd layers [default: one per core]
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        compress_threads: usize,
    },
    /// Write an image as real files, read through the same code the mount serves from.
    Export {
        description: PathBuf,
        /// Output directory (a file for --format archive)
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Oci)]
        format: Format,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Print the description with every layer's digest, diff_ids and size filled in.
    Digest {
        description: PathBuf,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Hash every layer from the store and report any that differs from the description.
    Check { description: PathBuf },
}

fn cache(dir: Option<PathBuf>) -> DigestCache {
    DigestCache::new(Some(dir.unwrap_or_else(DigestCache::default_dir)))
}

fn main() {
    let cli = Cli::parse();
    // The daemon tells what it serves; one-shot commands (run inside Nix builds) stay quiet.
    let level = if matches!(cli.command, Command::Mount { .. }) { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Mount { mountpoint, images, cache_dir, threads, compress_threads } => {
            nixoci::compress::pool::set_threads(compress_threads);
            // Large buffers (FUSE replies, compressed pieces) go back to the kernel when freed:
            // glibc would otherwise raise this threshold after the first one and keep tens of
            // MB of them resident (measured on the app closure: 76 MB peak, 49 with this).
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
            nixoci::mount::run(&mountpoint, images, cache(cache_dir), threads)
        }
        Command::Export { description, out, format, cache_dir } => commands::export(&description, &out, format, &cache(cache_dir)),
        Command::Digest { description, cache_dir } => commands::digest(&description, &cache(cache_dir)).map(|s| print!("{s}")),
        Command::Check { description } => match commands::check(&description) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("nixoci: {e}");
        std::process::exit(1);
    }
}
