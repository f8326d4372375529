//! Jupyter for a room: nbformat 4 notebooks (`notebook`), what a cell's execution produced
//! (`output`), kernelspecs found on disk (`spec`) and a kernel client over ZeroMQ (`client`).
//! It owns no processes and no files: the agent starts kernels and reads and writes notebooks
//! through its workspace; this crate only parses, edits, renders and speaks the protocol.

pub mod client;
pub mod notebook;
pub mod ops;
pub mod output;
pub mod spec;

pub use client::{Control, KernelClient, KernelError, ReplyStatus};
pub use notebook::{CellRef, CellType, Notebook, NotebookError};
pub use output::{Collector, Output, strip_ansi};
pub use spec::{KernelSpec, SpecError};
