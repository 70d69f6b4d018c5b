use clap::{Parser, Subcommand};
use nixoci::commands::{self, Format};
use nixoci::digest::DigestCache;
use std::ffi::OsString;
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
    /// Serve every description in --images as NAME/ (OCI layout), NAME.dir/ (skopeo dir:),
    /// NAME.tar (docker-archive), NAME.rootfs/ (its root filesystem) and NAME.bundle/ (an OCI
    /// runtime bundle) under MOUNTPOINT, until SIGINT or SIGTERM.
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
        /// Read NAME.rootfs files in the daemon instead of letting the kernel read their store
        /// files directly (FUSE passthrough)
        #[arg(long)]
        no_passthrough: bool,
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
    /// Run an image of a mount with podman, from its NAME.rootfs view (nothing is pulled or
    /// copied), with the image config's Env, WorkingDir, User and Entrypoint; ARGS replace Cmd.
    Run {
        /// The nixoci mount [default: the one running on this machine]
        #[arg(long)]
        mount: Option<PathBuf>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "NAME [ARGS]... [-- PODMAN-OPTS]")]
        words: Vec<String>,
    },
    /// skopeo copy of the image to DEST, extra skopeo options after it (the Nix library's
    /// copyTo* scripts). Reads it from a running mount that serves it, else from a private
    /// mount for the length of the copy, else (no FUSE) from an exported layout.
    Copy {
        description: PathBuf,
        /// The skopeo to run [default: skopeo in PATH]
        #[arg(long)]
        skopeo: Option<PathBuf>,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// DEST (any skopeo destination), then skopeo copy options
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "DEST [OPTIONS]")]
        args: Vec<OsString>,
    },
    /// The builder of the Nix library's derivations: reads the structured attrs of the build
    /// (closure graphs and layer options) and writes its output (layers.json, the image
    /// description, the Nix database registration).
    Plan {
        /// [default: $NIX_ATTRS_JSON_FILE, else .attrs.json]
        attrs: Option<PathBuf>,
    },
}

fn cache(dir: Option<PathBuf>) -> DigestCache {
    DigestCache::new(Some(dir.unwrap_or_else(DigestCache::default_dir)))
}

fn main() {
    let cli = Cli::parse();
    // The daemon tells what it serves; one-shot commands (run inside Nix builds) stay quiet.
    // copy: a reply the kernel no longer waits for (skopeo stopped mid-read) is no error.
    let level = match cli.command {
        Command::Mount { .. } => "info",
        Command::Copy { .. } => "warn,fuser::reply=off",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Mount { mountpoint, images, cache_dir, threads, compress_threads, no_passthrough } => {
            nixoci::compress::pool::set_threads(compress_threads);
            // Large buffers (FUSE replies, compressed pieces) go back to the kernel when freed:
            // glibc would otherwise raise this threshold after the first one and keep tens of
            // MB of them resident (measured on the app closure: 76 MB peak, 49 with this).
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
            nixoci::mount::run(&mountpoint, images, cache(cache_dir), threads, !no_passthrough)
        }
        Command::Export { description, out, format, cache_dir } => commands::export(&description, &out, format, &cache(cache_dir)),
        Command::Digest { description, cache_dir } => commands::digest(&description, &cache(cache_dir)).map(|s| print!("{s}")),
        Command::Run { mount, words } => nixoci::run::run(mount, &words),
        Command::Check { description } => match commands::check(&description) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        Command::Copy { description, skopeo, cache_dir, args } => {
            let dir = cache_dir.unwrap_or_else(DigestCache::default_dir);
            nixoci::copy::run(&description, &args, skopeo, dir).map(|code| std::process::exit(code))
        }
        Command::Plan { attrs } => {
            let attrs = attrs.or_else(|| std::env::var_os("NIX_ATTRS_JSON_FILE").map(PathBuf::from));
            nixoci::nixbuild::run(&attrs.unwrap_or_else(|| PathBuf::from(".attrs.json")))
        }
    };
    if let Err(e) = result {
        eprintln!("nixoci: {e}");
        std::process::exit(1);
    }
}
