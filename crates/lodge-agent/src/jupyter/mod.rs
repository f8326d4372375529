//! `jupyter`: notebooks in the workspace and kernels in the room. Notebook files are read and
//! written through the workspace (atomic saves; a revision check refuses to overwrite edits
//! made outside Lodge); code runs in kernels started here. Policy (limits, timeouts, which
//! specs exist) comes with each request from the hub; nothing here logs code or outputs.

mod kernels;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lodge_kernel::notebook::{self, CellRef, Notebook};
use lodge_kernel::ops::{
    COMPACT_ABOVE, JupyterOp, JupyterResult, KernelSettings, NotebookEntry, Run, RunStatus,
    SpecInfo,
};
use lodge_kernel::spec::{self, KernelSpec};
use tokio_util::sync::CancellationToken;

use self::kernels::{Kernel, Kernels, Launch};
use super::command::CommandContext;
use crate::workspace::{MAX_READ, Workspace};
use lodge_protocol::{ErrorKind, OpError};

/// Largest notebook file read (the whole file is parsed in memory).
const MAX_NOTEBOOK: u64 = 64 * 1024 * 1024;
/// The scratch kernel `code_execute` uses when it names none.
const SCRATCH: &str = "scratch";
/// Where the user's own kernelspecs live (`python -m ipykernel install --user` with HOME set
/// to the workspace).
const USER_DIR: &str = ".local/share/jupyter";

/// The room's notebooks and kernels.
pub(crate) struct Jupyter {
    kernels: Kernels,
    workspace: Arc<Workspace>,
    /// The workspace and tmp paths as the agent sees them.
    root: PathBuf,
    tmp: PathBuf,
    settings: Mutex<KernelSettings>,
}

type Outcome = Result<JupyterResult, OpError>;

impl Jupyter {
    pub(crate) fn new(workspace: Arc<Workspace>, root: &Path, tmp: &Path) -> Jupyter {
        Jupyter {
            kernels: Kernels::default(),
            workspace,
            root: root.to_path_buf(),
            tmp: tmp.to_path_buf(),
            settings: Mutex::new(KernelSettings::default()),
        }
    }

    fn settings(&self) -> KernelSettings {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Handles one request.
    pub(crate) async fn handle(
        &self,
        ctx: &CommandContext,
        settings: KernelSettings,
        op: JupyterOp,
        cancel: &CancellationToken,
    ) -> Outcome {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
        let exec = Exec { ctx, cancel };
        match op.normalized() {
            JupyterOp::NotebookList { path, limit } => self.list(&path, limit).await,
            JupyterOp::NotebookCreate {
                path,
                kernel,
                overwrite,
            } => self.create(&path, kernel.as_deref(), overwrite).await,
            JupyterOp::NotebookRead {
                path,
                compact,
                start,
                end,
            } => {
                let (nb, revision) = self.load(&path).await?;
                let compact = compact.unwrap_or(nb.len() > COMPACT_ABOVE);
                let text = nb.render(&path, &revision, compact, index(start), index(end));
                Ok(JupyterResult::Notebook {
                    cells: nb.len() as u64,
                    path,
                    revision,
                    text,
                    outputs: Vec::new(),
                })
            }
            JupyterOp::CellRead { path, cell } => {
                let (nb, revision) = self.load(&path).await?;
                let i = nb.resolve(&cell).map_err(invalid)?;
                Ok(JupyterResult::Notebook {
                    cells: nb.len() as u64,
                    text: nb.render_cell(i),
                    outputs: nb.outputs(i),
                    path,
                    revision,
                })
            }
            JupyterOp::CellInsert {
                path,
                index: at,
                cell_type,
                source,
                revision,
            } => {
                let at = at.map(|i| usize::try_from(i).unwrap_or(usize::MAX));
                self.change(&path, revision.as_deref(), |nb| {
                    let (i, id) = nb.insert(at, cell_type, source.expose())?;
                    Ok((Some(i), Some(id)))
                })
                .await
            }
            JupyterOp::CellEdit {
                path,
                cell,
                source,
                cell_type,
                revision,
            } => {
                self.change(&path, revision.as_deref(), |nb| {
                    let i = nb.resolve(&cell)?;
                    nb.edit(i, source.expose(), cell_type)?;
                    Ok((Some(i), nb.cell_id(i).map(str::to_string)))
                })
                .await
            }
            JupyterOp::CellMove {
                path,
                cell,
                to,
                revision,
            } => {
                self.change(&path, revision.as_deref(), |nb| {
                    let i = nb.resolve(&cell)?;
                    let to = usize::try_from(to).unwrap_or(usize::MAX);
                    nb.move_cell(i, to)?;
                    Ok((Some(to), nb.cell_id(to).map(str::to_string)))
                })
                .await
            }
            JupyterOp::CellDelete {
                path,
                cell,
                revision,
            } => {
                self.change(&path, revision.as_deref(), |nb| {
                    let i = nb.resolve(&cell)?;
                    let id = nb.delete(i)?;
                    Ok((Some(i), Some(id)))
                })
                .await
            }
            JupyterOp::CellExecute {
                path,
                cell,
                timeout_ms,
                output_cap,
                revision,
            } => {
                let limits = RunLimits::new(timeout_ms, output_cap);
                self.execute_cells(&exec, &path, Cells::One(cell), revision.as_deref(), limits)
                    .await
            }
            JupyterOp::NotebookExecute {
                path,
                timeout_ms,
                output_cap,
                stop_on_error,
                revision,
            } => {
                let limits = RunLimits::new(timeout_ms, output_cap);
                let cells = Cells::All { stop_on_error };
                self.execute_cells(&exec, &path, cells, revision.as_deref(), limits)
                    .await
            }
            JupyterOp::CodeExecute {
                code,
                kernel,
                kernel_name,
                timeout_ms,
                output_cap,
            } => {
                let id = kernel.unwrap_or_else(|| SCRATCH.to_string());
                let kernel = self.kernel(&exec, &id, kernel_name.as_deref()).await?;
                let limits = RunLimits::new(timeout_ms, output_cap);
                let run = kernel
                    .run(code.expose(), limits.timeout, limits.output_cap, cancel)
                    .await;
                Ok(JupyterResult::Executed {
                    kernel: id,
                    path: None,
                    revision: None,
                    runs: vec![run],
                })
            }
            JupyterOp::KernelList => Ok(JupyterResult::Kernels {
                kernels: self.kernels.all().iter().map(|k| k.info()).collect(),
                specs: self.specs_info(),
            }),
            JupyterOp::KernelInterrupt { kernel } => {
                let k = self.existing(&kernel)?;
                if let Some(reason) = k.dead() {
                    return Err(dead_kernel(&kernel, &reason));
                }
                k.interrupt().await;
                Ok(done(format!(
                    "kernel {kernel:?} was interrupted; its state is kept"
                )))
            }
            JupyterOp::KernelRestart { kernel } => self.restart(ctx, &kernel).await,
            JupyterOp::KernelShutdown { kernel } => {
                self.existing(&kernel)?;
                self.kernels.shutdown(&kernel).await;
                Ok(done(format!("kernel {kernel:?} was shut down")))
            }
        }
    }

    /// How often to look for idle kernels: often enough that none lives much past its idle
    /// timeout, at most every 15 s.
    pub(crate) fn cull_interval(&self) -> Duration {
        let idle = Duration::from_millis(self.settings().idle_timeout_ms);
        (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15))
    }

    /// Stops kernels idle longer than the current setting.
    pub(crate) async fn cull(&self) -> usize {
        let idle = Duration::from_millis(self.settings().idle_timeout_ms);
        self.kernels.cull(idle).await
    }

    pub(crate) async fn stop_all(&self) {
        self.kernels.stop_all().await;
    }

    async fn list(&self, path: &str, limit: u64) -> Outcome {
        let ws = self.workspace.clone();
        let path = path.to_string();
        let limit = usize::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
        let found = blocking(move || Ok(ws.search(&path, Some("*.ipynb"), None, limit)?)).await?;
        let ws = self.workspace.clone();
        let notebooks = blocking(move || {
            Ok(found
                .matches
                .into_iter()
                .map(|m| {
                    let size = ws.read(&m.path, 0, 1).map_or(0, |page| page.total_size);
                    NotebookEntry { path: m.path, size }
                })
                .collect())
        })
        .await?;
        Ok(JupyterResult::Notebooks {
            notebooks,
            truncated: found.truncated,
        })
    }

    async fn create(&self, path: &str, kernel: Option<&str>, overwrite: bool) -> Outcome {
        check_notebook_path(path)?;
        let settings = self.settings();
        let specs = self.specs();
        let spec = spec::choose(&specs, kernel, &settings.default, settings.room_network)
            .map_err(|e| OpError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let nb = Notebook::new(&spec.name, &spec.display_name, &spec.language);
        let bytes = nb.to_bytes();
        let ws = self.workspace.clone();
        let file = path.to_string();
        let exists = blocking({
            let ws = ws.clone();
            let file = file.clone();
            move || Ok(ws.read(&file, 0, 1).is_ok())
        })
        .await?;
        if exists && !overwrite {
            return Err(OpError::new(
                ErrorKind::AlreadyExists,
                format!("{path} already exists; pass overwrite=true to replace it"),
            ));
        }
        let revision = notebook::revision(&bytes);
        blocking(move || Ok(ws.write(&file, &bytes, true)?)).await?;
        Ok(JupyterResult::Changed {
            path: path.to_string(),
            revision,
            cells: 0,
            index: None,
            cell_id: None,
        })
    }

    /// Reads and parses a notebook, with its revision.
    async fn load(&self, path: &str) -> Result<(Notebook, String), OpError> {
        let bytes = self.read_bytes(path).await?;
        let revision = notebook::revision(&bytes);
        let nb = Notebook::parse(&bytes)
            .map_err(|e| OpError::new(ErrorKind::InvalidArgument, format!("{path}: {e}")))?;
        Ok((nb, revision))
    }

    async fn read_bytes(&self, path: &str) -> Result<Vec<u8>, OpError> {
        check_notebook_path(path)?;
        let ws = self.workspace.clone();
        let path = path.to_string();
        blocking(move || {
            let mut bytes = Vec::new();
            let mut offset = 0;
            loop {
                let page = ws.read(&path, offset, MAX_READ).map_err(OpError::from)?;
                if page.total_size > MAX_NOTEBOOK {
                    return Err(OpError::new(
                        ErrorKind::TooLarge,
                        format!(
                            "{path} is {} bytes; notebooks above {MAX_NOTEBOOK} bytes are not opened",
                            page.total_size
                        ),
                    ));
                }
                if page.lossy {
                    return Err(OpError::new(
                        ErrorKind::InvalidArgument,
                        format!("{path} is not UTF-8, so it is not a notebook"),
                    ));
                }
                bytes.extend_from_slice(page.content.as_bytes());
                if page.eof || page.next_offset <= offset {
                    return Ok(bytes);
                }
                offset = page.next_offset;
            }
        })
        .await
    }

    /// Saves `nb` if the file still has revision `expected`; returns the new revision.
    async fn save(&self, path: &str, nb: &Notebook, expected: &str) -> Result<String, OpError> {
        let current = notebook::revision(&self.read_bytes(path).await?);
        if current != expected {
            return Err(conflict(path, expected, &current));
        }
        let bytes = nb.to_bytes();
        let revision = notebook::revision(&bytes);
        let ws = self.workspace.clone();
        let file = path.to_string();
        blocking(move || Ok(ws.write(&file, &bytes, false)?)).await?;
        Ok(revision)
    }

    /// Loads, checks the client's revision, applies `edit`, saves.
    async fn change(
        &self,
        path: &str,
        client_revision: Option<&str>,
        edit: impl FnOnce(
            &mut Notebook,
        ) -> Result<(Option<usize>, Option<String>), notebook::NotebookError>,
    ) -> Outcome {
        let (mut nb, revision) = self.load(path).await?;
        check_revision(path, client_revision, &revision)?;
        let (index, cell_id) = edit(&mut nb).map_err(invalid)?;
        let revision = self.save(path, &nb, &revision).await?;
        Ok(JupyterResult::Changed {
            path: path.to_string(),
            revision,
            cells: nb.len() as u64,
            index: index.map(|i| i as u64),
            cell_id,
        })
    }

    /// Runs one cell or all code cells of a notebook in its kernel, saving each cell's outputs
    /// as it finishes.
    async fn execute_cells(
        &self,
        exec: &Exec<'_>,
        path: &str,
        cells: Cells,
        client_revision: Option<&str>,
        limits: RunLimits,
    ) -> Outcome {
        let (nb, mut revision) = self.load(path).await?;
        check_revision(path, client_revision, &revision)?;
        let targets: Vec<usize> = match &cells {
            Cells::One(cell) => {
                let i = nb.resolve(cell).map_err(invalid)?;
                if nb.cell_type(i) != Some(lodge_kernel::CellType::Code) {
                    return Err(OpError::new(
                        ErrorKind::InvalidArgument,
                        format!("cell {i} of {path} is not a code cell; only code cells run"),
                    ));
                }
                vec![i]
            }
            Cells::All { .. } => nb.code_cells(),
        };
        let stop_on_error = matches!(
            cells,
            Cells::All {
                stop_on_error: true
            }
        );
        let kernel = self.notebook_kernel(exec, path, &nb).await?;
        let mut runs = Vec::with_capacity(targets.len());
        let mut failed = false;
        for i in targets {
            let id = nb.cell_id(i).map(str::to_string);
            let source = nb.source(i).unwrap_or_default();
            if failed || exec.cancel.is_cancelled() {
                runs.push(skipped(i, id));
                continue;
            }
            let mut run = kernel
                .run(&source, limits.timeout, limits.output_cap, exec.cancel)
                .await;
            run.index = Some(i as u64);
            run.cell_id = id.clone();
            failed = stop_on_error && run.status != RunStatus::Ok;
            match self
                .store(path, &mut revision, id.as_deref(), &source, &run)
                .await
            {
                Ok(()) => {}
                Err(why) => run.not_saved = Some(why),
            }
            runs.push(run);
        }
        Ok(JupyterResult::Executed {
            kernel: path.to_string(),
            path: Some(path.to_string()),
            revision: Some(revision),
            runs,
        })
    }

    /// Stores a run's outputs in the cell it ran, in the file as it is now: if the file changed
    /// since `revision` (edited outside Lodge while the cell ran), the cell is found again by id
    /// and only updated if its source is still what ran.
    async fn store(
        &self,
        path: &str,
        revision: &mut String,
        cell_id: Option<&str>,
        source: &str,
        run: &Run,
    ) -> Result<(), String> {
        let (mut nb, current) = self.load(path).await.map_err(|e| e.message)?;
        let cell = cell_id.ok_or("the cell has no id")?;
        let i = nb
            .resolve(&CellRef::Id(cell.to_string()))
            .map_err(|_| format!("cell {cell} was deleted from {path} while it ran"))?;
        if nb.source(i).as_deref() != Some(source) {
            return Err(format!(
                "cell {cell} of {path} was edited while it ran; its outputs were not saved"
            ));
        }
        nb.set_outputs(i, &run.outputs, run.execution_count)
            .map_err(|e| e.to_string())?;
        *revision = self
            .save(path, &nb, &current)
            .await
            .map_err(|e| e.message)?;
        Ok(())
    }

    /// The kernel of notebook `path`, started from the notebook's kernelspec when needed.
    async fn notebook_kernel(
        &self,
        exec: &Exec<'_>,
        path: &str,
        nb: &Notebook,
    ) -> Result<Arc<Kernel>, OpError> {
        self.kernel(exec, path, nb.kernel_name().as_deref()).await
    }

    /// The live kernel `id` (a notebook path or a scratch name), starting it if there is none.
    /// A dead kernel is reported, not silently replaced: its state is gone.
    async fn kernel(
        &self,
        exec: &Exec<'_>,
        id: &str,
        wanted: Option<&str>,
    ) -> Result<Arc<Kernel>, OpError> {
        let is_notebook = id.ends_with(".ipynb");
        if is_notebook {
            check_notebook_path(id)?;
        } else {
            check_scratch_name(id)?;
        }
        let mut dead = None;
        let reuse = |kernel: &Arc<Kernel>| {
            match kernel.dead() {
                Some(reason) => dead = Some(reason),
                // Under the slot's lock, so the culler sees this use before it judges idleness.
                None => kernel.touch(),
            }
            true
        };
        let start = |_| async move {
            let wanted = match (wanted, is_notebook) {
                (Some(name), _) => Some(name.to_string()),
                (None, true) => self.load(id).await?.0.kernel_name(),
                (None, false) => None,
            };
            self.start(exec.ctx, id, wanted.as_deref()).await
        };
        let kernel = self.kernels.get_or_start(id, reuse, start).await?;
        match dead {
            Some(reason) => Err(dead_kernel(id, &reason)),
            None => Ok(kernel),
        }
    }

    async fn start(
        &self,
        ctx: &CommandContext,
        id: &str,
        wanted: Option<&str>,
    ) -> Result<Arc<Kernel>, OpError> {
        let settings = self.settings();
        let live = self.kernels.live() as u64;
        if live >= settings.max_kernels {
            return Err(OpError::new(
                ErrorKind::TooLarge,
                format!(
                    "this room already runs {live} kernels (kernels.max_per_user = {}); shut one \
                     down with kernel_shutdown (kernel_list shows them)",
                    settings.max_kernels
                ),
            ));
        }
        let specs = self.specs();
        let spec: KernelSpec =
            spec::choose(&specs, wanted, &settings.default, settings.room_network)
                .map_err(|e| OpError::new(ErrorKind::Kernel, e.to_string()))?
                .clone();
        let cwd = match id.rsplit_once('/') {
            Some((dir, _)) if id.ends_with(".ipynb") => dir,
            _ => ".",
        };
        let launch = Launch {
            id,
            spec: &spec,
            cwd,
        };
        Kernel::start(ctx, &self.tmp, launch, &settings).await
    }

    async fn restart(&self, ctx: &CommandContext, id: &str) -> Outcome {
        let old = self.existing(id)?;
        let start = |current: Option<Arc<Kernel>>| async {
            if let Some(current) = current {
                current.stop().await;
            }
            self.start(ctx, id, Some(&old.spec.name)).await
        };
        self.kernels.get_or_start(id, |_| false, start).await?;
        Ok(done(format!(
            "kernel {id:?} ({}) was restarted: its variables are gone",
            old.spec.name
        )))
    }

    fn existing(&self, id: &str) -> Result<Arc<Kernel>, OpError> {
        self.kernels.get(id).ok_or_else(|| {
            let running: Vec<String> = self.kernels.all().iter().map(|k| k.id.clone()).collect();
            OpError::new(
                ErrorKind::NotFound,
                format!(
                    "no kernel {id:?} in this room (running: {}); kernels start with cell_execute \
                     or code_execute",
                    if running.is_empty() {
                        "none".to_string()
                    } else {
                        running.join(", ")
                    }
                ),
            )
        })
    }

    fn data_dirs(&self) -> Vec<PathBuf> {
        let settings = self.settings();
        std::iter::once(self.root.join(USER_DIR))
            .chain(settings.paths.iter().map(PathBuf::from))
            .chain(settings.system_paths.iter().map(PathBuf::from))
            .collect()
    }

    fn specs(&self) -> Vec<KernelSpec> {
        spec::find_specs(&self.data_dirs())
    }

    fn specs_info(&self) -> Vec<SpecInfo> {
        let settings = self.settings();
        let specs = self.specs();
        let default = spec::choose(&specs, None, &settings.default, settings.room_network)
            .ok()
            .map(|s| s.name.clone());
        specs
            .iter()
            .map(|s| SpecInfo {
                name: s.name.clone(),
                display_name: s.display_name.clone(),
                language: s.language.clone(),
                default: Some(&s.name) == default.as_ref(),
            })
            .collect()
    }
}

/// What the request may use while it runs.
struct Exec<'a> {
    ctx: &'a CommandContext,
    cancel: &'a CancellationToken,
}

enum Cells {
    One(CellRef),
    All { stop_on_error: bool },
}

struct RunLimits {
    timeout: Duration,
    output_cap: usize,
}

impl RunLimits {
    fn new(timeout_ms: u64, output_cap: u64) -> RunLimits {
        RunLimits {
            timeout: Duration::from_millis(timeout_ms.max(1)),
            output_cap: usize::try_from(output_cap).unwrap_or(usize::MAX),
        }
    }
}

fn skipped(i: usize, cell_id: Option<String>) -> Run {
    Run {
        index: Some(i as u64),
        cell_id,
        ..Run::new(RunStatus::Skipped, Vec::new(), false)
    }
}

fn index(i: Option<u64>) -> Option<usize> {
    i.map(|i| usize::try_from(i).unwrap_or(usize::MAX))
}

fn done(message: String) -> JupyterResult {
    JupyterResult::Done { message }
}

fn invalid(error: notebook::NotebookError) -> OpError {
    OpError::new(ErrorKind::InvalidArgument, error.to_string())
}

fn dead_kernel(id: &str, reason: &str) -> OpError {
    OpError::new(
        ErrorKind::Kernel,
        format!(
            "kernel {id:?} is dead ({reason}); its state is lost: call kernel_restart to start a \
             fresh one"
        ),
    )
}

fn conflict(path: &str, expected: &str, current: &str) -> OpError {
    OpError::new(
        ErrorKind::Conflict,
        format!(
            "{path} changed since revision {expected} (it is now {current}): someone edited it \
             outside Lodge; read it again (notebook_read) and redo the change"
        ),
    )
}

fn check_revision(path: &str, client: Option<&str>, current: &str) -> Result<(), OpError> {
    match client {
        Some(expected) if expected != current => Err(conflict(path, expected, current)),
        _ => Ok(()),
    }
}

fn check_notebook_path(path: &str) -> Result<(), OpError> {
    if path.ends_with(".ipynb") {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorKind::InvalidArgument,
            format!("{path:?} is not a notebook path: notebook files end in .ipynb"),
        ))
    }
}

fn check_scratch_name(name: &str) -> Result<(), OpError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorKind::InvalidArgument,
            format!(
                "kernel {name:?}: give a notebook path (ending in .ipynb) or a scratch kernel \
                 name of 1-64 letters, digits, '-', '_' or '.'"
            ),
        ))
    }
}

/// Runs blocking workspace work off the agent's only thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|_| {
        Err(OpError::new(
            ErrorKind::Io,
            "the file operation failed inside the agent",
        ))
    })
}
