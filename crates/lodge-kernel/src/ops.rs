//! The Jupyter requests a hub sends to a room's agent and what comes back: plain data, carried
//! inside the room protocol's `jupyter` op. Notebook paths are workspace-relative and checked by
//! the agent's workspace; nothing here touches files or processes.

use lodge_core::Secret;
use serde::{Deserialize, Serialize};

use crate::notebook::{CellRef, CellType};
use crate::output::Output;

/// One Jupyter request; code and cell sources are [`Secret`]s, as they may hold credentials.
/// `revision`, where present, is the revision a client last read: the
/// request fails with a conflict if the file changed since (someone edited it outside Lodge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JupyterOp {
    /// Notebooks (`*.ipynb`) under `path`, recursively, at most `limit`.
    NotebookList {
        path: String,
        limit: u64,
    },
    /// A new notebook for kernelspec `kernel` (the default spec when `None`).
    NotebookCreate {
        path: String,
        kernel: Option<String>,
        overwrite: bool,
    },
    /// The notebook rendered as text: all cells, or `start..end` (cell indexes). `compact`
    /// (default: only for notebooks of more than [`COMPACT_ABOVE`] cells)
    /// shortens long sources and outputs.
    NotebookRead {
        path: String,
        compact: Option<bool>,
        start: Option<u64>,
        end: Option<u64>,
    },
    /// Runs every code cell in order, saving outputs; stops at the first error when
    /// `stop_on_error`. `timeout_ms` applies to each cell.
    NotebookExecute {
        path: String,
        timeout_ms: u64,
        output_cap: u64,
        stop_on_error: bool,
        revision: Option<String>,
    },
    /// One cell with its outputs.
    CellRead {
        path: String,
        cell: CellRef,
    },
    /// A new cell at `index` (appended when `None`).
    CellInsert {
        path: String,
        index: Option<u64>,
        cell_type: CellType,
        source: Secret<String>,
        revision: Option<String>,
    },
    /// Replaces a cell's source (and type, if given). A code cell's outputs are cleared.
    CellEdit {
        path: String,
        cell: CellRef,
        source: Secret<String>,
        cell_type: Option<CellType>,
        revision: Option<String>,
    },
    /// Moves a cell so that it ends up at index `to`.
    CellMove {
        path: String,
        cell: CellRef,
        to: u64,
        revision: Option<String>,
    },
    CellDelete {
        path: String,
        cell: CellRef,
        revision: Option<String>,
    },
    /// Runs one code cell in the notebook's kernel and stores outputs and execution count.
    CellExecute {
        path: String,
        cell: CellRef,
        timeout_ms: u64,
        output_cap: u64,
        revision: Option<String>,
    },
    /// Scratch code in kernel `kernel` (a notebook path for that notebook's kernel, or a
    /// scratch name; `"scratch"` when `None`), started from spec `kernel_name` when needed.
    CodeExecute {
        code: Secret<String>,
        kernel: Option<String>,
        kernel_name: Option<String>,
        timeout_ms: u64,
        output_cap: u64,
    },
    /// Running kernels and the kernelspecs the room has.
    KernelList,
    KernelInterrupt {
        kernel: String,
    },
    /// Restarts a kernel (its state is lost); a dead kernel is started again.
    KernelRestart {
        kernel: String,
    },
    /// Stops a kernel and forgets it.
    KernelShutdown {
        kernel: String,
    },
}

/// Notebooks with more cells than this are read in compact form unless asked otherwise.
pub const COMPACT_ABOVE: usize = 30;

/// What a Jupyter request produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JupyterResult {
    Notebooks {
        notebooks: Vec<NotebookEntry>,
        truncated: bool,
    },
    /// For `NotebookRead` and `CellRead`: `text` is the rendering; `outputs` the outputs of the
    /// one cell (`CellRead` only), for rich content such as images.
    Notebook {
        path: String,
        revision: String,
        cells: u64,
        text: String,
        outputs: Vec<Output>,
    },
    /// A notebook was created or changed; `index`/`cell_id` name the cell concerned, if one.
    Changed {
        path: String,
        revision: String,
        cells: u64,
        index: Option<u64>,
        cell_id: Option<String>,
    },
    /// Executions: one run per cell (`CellExecute`, `NotebookExecute`) or one scratch run.
    /// `path`/`revision` are set when a notebook was involved (`revision` after the save).
    Executed {
        kernel: String,
        path: Option<String>,
        revision: Option<String>,
        runs: Vec<Run>,
    },
    Kernels {
        kernels: Vec<KernelInfo>,
        specs: Vec<SpecInfo>,
    },
    /// `KernelInterrupt`, `KernelRestart`, `KernelShutdown`: what happened, in words.
    Done { message: String },
}

/// A notebook file found by `NotebookList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotebookEntry {
    pub path: String,
    pub size: u64,
}

/// The result of running one piece of code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The cell, for notebook runs.
    pub index: Option<u64>,
    pub cell_id: Option<String>,
    pub execution_count: Option<i64>,
    pub status: RunStatus,
    pub outputs: Vec<Output>,
    /// Outputs beyond the cap were dropped (a note among the outputs says how much).
    pub truncated: bool,
    /// Why the outputs were not saved to the notebook, when they were not.
    pub not_saved: Option<String>,
}

impl Run {
    /// A run with `status` and `outputs`, not (yet) tied to a cell or an execution count.
    pub fn new(status: RunStatus, outputs: Vec<Output>, truncated: bool) -> Run {
        Run {
            index: None,
            cell_id: None,
            execution_count: None,
            status,
            outputs,
            truncated,
            not_saved: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Ok,
    /// The code raised; the error output has the traceback.
    Error,
    /// Stopped at the timeout: the kernel was interrupted (its state is kept).
    TimedOut,
    /// Interrupted by `kernel_interrupt` or a cancelled request.
    Interrupted,
    /// The kernel died while running it; `kernel_restart` starts a new one.
    KernelDied,
    /// Not run: an earlier cell failed (`NotebookExecute` with `stop_on_error`).
    Skipped,
}

/// A running kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// A notebook path or a scratch name.
    pub id: String,
    /// Its kernelspec.
    pub name: String,
    /// `idle`, `busy`, `starting` or `dead`.
    pub state: String,
    pub execution_count: i64,
    pub pid: Option<u32>,
    /// Resident memory of the kernel process tree, bytes (it counts against the room's limit).
    pub memory_bytes: Option<u64>,
    pub idle_seconds: u64,
}

/// A kernelspec found in the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecInfo {
    pub name: String,
    pub display_name: String,
    pub language: String,
    pub default: bool,
}

/// The operator's kernel settings (`[kernels]`), sent with every request so the agent needs no
/// configuration of its own; the latest one received applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSettings {
    /// Jupyter data directories searched for `kernels/*/kernel.json` after the user's own
    /// (`/workspace/.local/share/jupyter`) and before `system_paths`.
    pub paths: Vec<String>,
    /// The kernelspec used when a notebook or call names none.
    pub default: String,
    /// Kernels idle this long are shut down.
    pub idle_timeout_ms: u64,
    /// How long a kernel may take to start answering.
    pub start_timeout_ms: u64,
    /// Kernels one room may run at once.
    pub max_kernels: u64,
    /// Jupyter data directories searched last (`[kernels] system_paths`).
    pub system_paths: Vec<String>,
    /// The room reaches the network (its hints may then suggest installing from PyPI).
    pub room_network: bool,
}

impl Default for KernelSettings {
    fn default() -> Self {
        KernelSettings {
            paths: Vec::new(),
            default: "python3".to_string(),
            idle_timeout_ms: 30 * 60 * 1000,
            start_timeout_ms: 60 * 1000,
            max_kernels: 4,
            system_paths: vec![
                "/usr/local/share/jupyter".to_string(),
                "/usr/share/jupyter".to_string(),
            ],
            room_network: false,
        }
    }
}

impl JupyterOp {
    /// The request's name (for logs: the arguments may hold code or secrets).
    pub fn name(&self) -> &'static str {
        match self {
            JupyterOp::NotebookList { .. } => "notebook_list",
            JupyterOp::NotebookCreate { .. } => "notebook_create",
            JupyterOp::NotebookRead { .. } => "notebook_read",
            JupyterOp::NotebookExecute { .. } => "notebook_execute",
            JupyterOp::CellRead { .. } => "cell_read",
            JupyterOp::CellInsert { .. } => "cell_insert",
            JupyterOp::CellEdit { .. } => "cell_edit",
            JupyterOp::CellMove { .. } => "cell_move",
            JupyterOp::CellDelete { .. } => "cell_delete",
            JupyterOp::CellExecute { .. } => "cell_execute",
            JupyterOp::CodeExecute { .. } => "code_execute",
            JupyterOp::KernelList => "kernel_list",
            JupyterOp::KernelInterrupt { .. } => "kernel_interrupt",
            JupyterOp::KernelRestart { .. } => "kernel_restart",
            JupyterOp::KernelShutdown { .. } => "kernel_shutdown",
        }
    }

    /// The same request with its notebook paths (and notebook kernel ids) in one spelling, so
    /// `a.ipynb`, `./a.ipynb` and `.//a.ipynb` name one file and one kernel.
    /// Only `.` and empty components go; `..` stays for the workspace rules to judge.
    pub fn normalized(mut self) -> Self {
        match &mut self {
            JupyterOp::NotebookCreate { path, .. }
            | JupyterOp::NotebookRead { path, .. }
            | JupyterOp::NotebookExecute { path, .. }
            | JupyterOp::CellRead { path, .. }
            | JupyterOp::CellInsert { path, .. }
            | JupyterOp::CellEdit { path, .. }
            | JupyterOp::CellMove { path, .. }
            | JupyterOp::CellDelete { path, .. }
            | JupyterOp::CellExecute { path, .. }
            | JupyterOp::CodeExecute {
                kernel: Some(path), ..
            }
            | JupyterOp::KernelInterrupt { kernel: path }
            | JupyterOp::KernelRestart { kernel: path }
            | JupyterOp::KernelShutdown { kernel: path } => {
                if path.ends_with(".ipynb") {
                    *path = normal_path(path);
                }
            }
            JupyterOp::NotebookList { .. }
            | JupyterOp::CodeExecute { kernel: None, .. }
            | JupyterOp::KernelList => {}
        }
        self
    }
}

/// `path` without `.` and empty components; a leading `/` is kept (the workspace refuses it).
fn normal_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    let joined = parts.join("/");
    if path.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_paths_and_kernel_ids_get_one_spelling() {
        assert_eq!(normal_path("./a.ipynb"), "a.ipynb");
        assert_eq!(normal_path("x//./y/a.ipynb"), "x/y/a.ipynb");
        assert_eq!(normal_path("x/../a.ipynb"), "x/../a.ipynb");
        assert_eq!(normal_path("/etc/./a.ipynb"), "/etc/a.ipynb");
        let op = JupyterOp::KernelRestart {
            kernel: "./n/a.ipynb".into(),
        };
        assert_eq!(
            op.normalized(),
            JupyterOp::KernelRestart {
                kernel: "n/a.ipynb".into()
            }
        );
        // Scratch kernel names are not paths and stay as given.
        let op = JupyterOp::KernelShutdown {
            kernel: "scratch".into(),
        };
        assert_eq!(op.clone().normalized(), op);
    }
}
