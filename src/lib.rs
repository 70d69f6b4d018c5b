//! nixoci: Nix image descriptions served as OCI image layouts, with layer tars made on read.

pub mod blob;
pub mod catalog;
pub mod commands;
pub mod compress;
pub mod conversion;
pub mod copy;
pub mod description;
pub mod digest;
pub mod entry;
pub mod fs;
pub mod goregex;
pub mod image;
pub mod image_index;
pub mod layer;
pub mod mount;
pub mod nixbuild;
pub mod plan;
pub mod platform;
pub mod run;
pub mod views;
