//! Notebook and kernel tools (see docs/notebooks.md): arguments become room requests (with the
//! profile's limits and the operator's kernel settings) and results MCP content; the room does
//! the work. This module never logs code or outputs.

use std::sync::Arc;

use lodge_core::config::KernelsConfig;
use lodge_kernel::notebook::{CellRef, CellType};
use lodge_kernel::ops::{JupyterOp, JupyterResult, KernelSettings, Run, RunStatus};
use lodge_kernel::output::{Part, to_parts};
use lodge_protocol::{self as proto, Op, OpResult};
use rmcp::model::{CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Registry, ToolError, profile_timeout, room_result, structured_with_text};
use crate::caller::Caller;
use crate::context::{Notice, NoticeSink, Progress, RequestContext};
use crate::rooms::Rooms;

/// A cell: its index (negative counts from the end) or its id (`notebook_read` shows both).
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CellArg {
    Index(i64),
    Id(String),
}

impl From<CellArg> for CellRef {
    fn from(cell: CellArg) -> CellRef {
        match cell {
            CellArg::Index(i) => CellRef::Index(i),
            CellArg::Id(id) => CellRef::Id(id),
        }
    }
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum CellKind {
    Code,
    Markdown,
    Raw,
}

impl From<CellKind> for CellType {
    fn from(kind: CellKind) -> CellType {
        match kind {
            CellKind::Code => CellType::Code,
            CellKind::Markdown => CellType::Markdown,
            CellKind::Raw => CellType::Raw,
        }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// List the notebooks (`*.ipynb`) in your workspace.
pub struct ListArgs {
    /// Directory to search, relative to the workspace (default: all of it).
    path: Option<String>,
    /// At most this many (default 1000).
    limit: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Create an empty notebook.
pub struct CreateArgs {
    /// Workspace-relative path ending in `.ipynb`.
    path: String,
    /// Kernelspec name (kernel_list shows them; default: the hub's default).
    kernel: Option<String>,
    /// Replace an existing file.
    #[serde(default)]
    overwrite: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Read a notebook as text: cells with their index, id, execution count and outputs.
pub struct ReadArgs {
    path: String,
    /// Shorten long sources and outputs (default: only for notebooks of more than 30 cells).
    compact: Option<bool>,
    /// First cell index to show.
    start: Option<u64>,
    /// Show cells before this index.
    end: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Run every code cell of a notebook in order in its kernel, saving the outputs.
pub struct ExecuteAllArgs {
    path: String,
    /// Seconds each cell may run before the kernel is interrupted (default and maximum from
    /// your profile).
    timeout_s: Option<f64>,
    /// Stop at the first cell that fails (default true).
    stop_on_error: Option<bool>,
    /// The revision you last read; refuse if the file changed since.
    revision: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Read one cell: its source and outputs (images as image content).
pub struct CellReadArgs {
    path: String,
    cell: CellArg,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Insert a cell, and optionally run it.
pub struct InsertArgs {
    path: String,
    source: String,
    /// code (default), markdown or raw.
    cell_type: Option<CellKind>,
    /// Position of the new cell (default: at the end).
    index: Option<u64>,
    /// Run the new code cell right away.
    #[serde(default)]
    execute: bool,
    /// Seconds the cell may run (with execute).
    timeout_s: Option<f64>,
    revision: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Replace a cell's source (a code cell's outputs are cleared), and optionally run it.
pub struct EditArgs {
    path: String,
    cell: CellArg,
    source: String,
    cell_type: Option<CellKind>,
    #[serde(default)]
    execute: bool,
    timeout_s: Option<f64>,
    revision: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Move a cell so that it ends up at index `to`.
pub struct MoveArgs {
    path: String,
    cell: CellArg,
    to: u64,
    revision: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Delete a cell.
pub struct DeleteArgs {
    path: String,
    cell: CellArg,
    revision: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Run a code cell in the notebook's kernel; its outputs and execution count are saved.
pub struct CellExecuteArgs {
    path: String,
    cell: CellArg,
    timeout_s: Option<f64>,
    revision: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Run code in a kernel without a notebook file (or in a notebook's kernel, to inspect it).
pub struct CodeArgs {
    code: String,
    /// A notebook path (that notebook's kernel) or a scratch kernel name (default "scratch").
    kernel: Option<String>,
    /// Kernelspec for a kernel started by this call.
    kernel_name: Option<String>,
    timeout_s: Option<f64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// List running kernels and the kernelspecs available in your room.
pub struct NoArgs {}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// A kernel: a notebook path or a scratch kernel name (kernel_list shows them).
pub struct KernelArgs {
    kernel: String,
}

/// How often a caller that asked for progress hears that its code still runs.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What every notebook tool uses: the rooms kernels run in and the operator's kernel settings.
pub struct Notebooks {
    rooms: Arc<Rooms>,
    settings: KernelSettings,
    /// Rooms with kernels are kept this long after a notebook call (kernels outlive calls).
    hold: std::time::Duration,
}

/// Adds the notebook, cell and kernel tools, in the order `tools/list` shows them.
pub fn register(registry: Registry, rooms: &Arc<Rooms>, config: &KernelsConfig) -> Registry {
    let nb = Arc::new(Notebooks::new(rooms.clone(), config));
    registry
        .tool(NotebookList { nb: nb.clone() })
        .tool(NotebookCreate { nb: nb.clone() })
        .tool(NotebookRead { nb: nb.clone() })
        .tool(NotebookExecute { nb: nb.clone() })
        .tool(CellRead { nb: nb.clone() })
        .tool(CellInsert { nb: nb.clone() })
        .tool(CellEdit { nb: nb.clone() })
        .tool(CellMove { nb: nb.clone() })
        .tool(CellDelete { nb: nb.clone() })
        .tool(CellExecute { nb: nb.clone() })
        .tool(CodeExecute { nb: nb.clone() })
        .tool(KernelList { nb: nb.clone() })
        .tool(KernelInterrupt { nb: nb.clone() })
        .tool(KernelRestart { nb: nb.clone() })
        .tool(KernelShutdown { nb })
}

impl Notebooks {
    fn new(rooms: Arc<Rooms>, config: &KernelsConfig) -> Self {
        let settings = KernelSettings {
            paths: config
                .paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            system_paths: config
                .system_paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            room_network: false,
            default: config.default.clone(),
            idle_timeout_ms: config.idle_timeout.as_millis() as u64,
            start_timeout_ms: config.start_timeout.as_millis() as u64,
            max_kernels: u64::from(config.max_per_user),
        };
        Self {
            rooms,
            hold: config.idle_timeout,
            settings,
        }
    }

    async fn ask(&self, caller: &Caller, request: JupyterOp) -> Result<JupyterResult, ToolError> {
        self.ask_with_progress(caller, request, None).await
    }

    /// [`Self::ask`], telling a caller that asked for progress every second how long its code
    /// has been running (kernels report no progress of their own).
    async fn ask_with_progress(
        &self,
        caller: &Caller,
        request: JupyterOp,
        progress: Option<&NoticeSink>,
    ) -> Result<JupyterResult, ToolError> {
        let ticker = progress
            .filter(|_| runs_code(&request))
            .map(|sink| tokio::spawn(tick(sink.clone())));
        let settings = KernelSettings {
            room_network: self.rooms.has_network(caller),
            ..self.settings.clone()
        };
        let op = Op::Jupyter(proto::Jupyter { settings, request });
        let answer = self.rooms.call_held(caller, op, None, self.hold).await;
        if let Some(ticker) = ticker {
            ticker.abort();
        }
        match room_result(answer)? {
            OpResult::Jupyter { result } => Ok(result),
            other => Err(ToolError::Failed(format!(
                "the room answered a notebook request with {other:?}; is the agent the same version as the hub?"
            ))),
        }
    }

    /// The profile's run limits for a call.
    fn limits(
        &self,
        tool: &str,
        caller: &Caller,
        timeout_s: Option<f64>,
    ) -> Result<(u64, u64), ToolError> {
        let profile = self.rooms.profile(caller);
        let timeout = profile_timeout(tool, profile, timeout_s)?;
        Ok((timeout.as_millis().max(1) as u64, profile.output_cap))
    }

    /// Runs `request`, with progress if the caller asked for it, as the tool result.
    async fn answer(
        &self,
        cx: &RequestContext,
        request: JupyterOp,
    ) -> Result<CallToolResult, ToolError> {
        let progress = cx.progress();
        Ok(present(
            self.ask_with_progress(&cx.caller, request, progress)
                .await?,
        ))
    }

    /// A cell change, then (with `execute`) a run of the cell it concerned, at the revision the
    /// change produced, for at most `timeout_s`.
    async fn change_then_run(
        &self,
        tool: &str,
        cx: &RequestContext,
        request: JupyterOp,
        execute: bool,
        timeout_s: Option<f64>,
    ) -> Result<CallToolResult, ToolError> {
        let caller = &cx.caller;
        let limits = if execute {
            Some(self.limits(tool, caller, timeout_s)?)
        } else {
            None
        };
        let changed = self.ask(caller, request).await?;
        let Some((timeout_ms, output_cap)) = limits else {
            return Ok(present(changed));
        };
        let JupyterResult::Changed {
            path,
            revision,
            cell_id: Some(cell_id),
            ..
        } = &changed
        else {
            return Ok(present(changed));
        };
        let execute = JupyterOp::CellExecute {
            path: path.clone(),
            cell: CellRef::Id(cell_id.clone()),
            timeout_ms,
            output_cap,
            revision: Some(revision.clone()),
        };
        let mut result = present(
            self.ask_with_progress(caller, execute, cx.progress())
                .await?,
        );
        result
            .content
            .insert(0, ContentBlock::text(changed_text(&changed)));
        Ok(result)
    }
}

/// Defines a notebook tool whose arguments become one request to the room: its name,
/// description, and the request built from the shared [`Notebooks`] and the arguments.
macro_rules! notebook_tool {
    (
        $tool:ident,
        $name:literal,
        $description:literal,
        |$nb:pat_param, $args:pat_param, $cx:ident: $args_ty:ty| $request:expr
    ) => {
        tool!(
            $tool { nb: Arc<Notebooks> },
            $name,
            $description,
            |this, $args, $cx: $args_ty| {
                let $nb = &this.nb;
                let request = $request;
                this.nb.answer($cx, request).await
            }
        );
    };
}

notebook_tool!(
    NotebookList,
    "notebook_list",
    "List the notebooks (*.ipynb) in your workspace.",
    |_, a, cx: ListArgs| JupyterOp::NotebookList {
        path: a.path.unwrap_or_else(|| ".".into()),
        limit: a.limit.unwrap_or(1000),
    }
);

notebook_tool!(
    NotebookCreate,
    "notebook_create",
    "Create an empty notebook (nbformat 4) for a kernelspec.",
    |_, a, cx: CreateArgs| JupyterOp::NotebookCreate {
        path: a.path,
        kernel: a.kernel,
        overwrite: a.overwrite,
    }
);

notebook_tool!(
    NotebookRead,
    "notebook_read",
    "Read a notebook as text: each cell with its index, id, execution count and outputs, and the notebook's revision (pass it to editing tools to refuse edits made meanwhile outside Lodge).",
    |_, a, cx: ReadArgs| JupyterOp::NotebookRead {
        path: a.path,
        compact: a.compact,
        start: a.start,
        end: a.end,
    }
);

notebook_tool!(
    NotebookExecute,
    "notebook_execute",
    "Run all code cells of a notebook in order in its kernel, saving outputs and execution counts to the file.",
    |nb, a, cx: ExecuteAllArgs| {
        let (timeout_ms, output_cap) = nb.limits(Self::NAME, &cx.caller, a.timeout_s)?;
        JupyterOp::NotebookExecute {
            path: a.path,
            timeout_ms,
            output_cap,
            stop_on_error: a.stop_on_error.unwrap_or(true),
            revision: a.revision,
        }
    }
);

notebook_tool!(
    CellRead,
    "cell_read",
    "Read one cell: source and outputs (images as image content).",
    |_, a, cx: CellReadArgs| JupyterOp::CellRead {
        path: a.path,
        cell: a.cell.into(),
    }
);

tool!(
    CellInsert { nb: Arc<Notebooks> },
    "cell_insert",
    "Insert a code, markdown or raw cell into a notebook; execute=true runs a new code cell at once.",
    |this, a, cx: InsertArgs| {
        let request = JupyterOp::CellInsert {
            path: a.path,
            index: a.index,
            cell_type: a.cell_type.map_or(CellType::Code, CellType::from),
            source: a.source.into(),
            revision: a.revision,
        };
        let nb = &this.nb;
        nb.change_then_run(Self::NAME, cx, request, a.execute, a.timeout_s)
            .await
    }
);

tool!(
    CellEdit { nb: Arc<Notebooks> },
    "cell_edit",
    "Replace a cell's source (clearing a code cell's outputs); execute=true runs it.",
    |this, a, cx: EditArgs| {
        let request = JupyterOp::CellEdit {
            path: a.path,
            cell: a.cell.into(),
            source: a.source.into(),
            cell_type: a.cell_type.map(CellType::from),
            revision: a.revision,
        };
        let nb = &this.nb;
        nb.change_then_run(Self::NAME, cx, request, a.execute, a.timeout_s)
            .await
    }
);

notebook_tool!(
    CellMove,
    "cell_move",
    "Move a cell to another index.",
    |_, a, cx: MoveArgs| JupyterOp::CellMove {
        path: a.path,
        cell: a.cell.into(),
        to: a.to,
        revision: a.revision,
    }
);

notebook_tool!(
    CellDelete,
    "cell_delete",
    "Delete a cell.",
    |_, a, cx: DeleteArgs| JupyterOp::CellDelete {
        path: a.path,
        cell: a.cell.into(),
        revision: a.revision,
    }
);

notebook_tool!(
    CellExecute,
    "cell_execute",
    "Run a code cell in the notebook's kernel (started on first use, kept between calls): stream output, results, images and errors come back as content and are saved in the file.",
    |nb, a, cx: CellExecuteArgs| {
        let (timeout_ms, output_cap) = nb.limits(Self::NAME, &cx.caller, a.timeout_s)?;
        JupyterOp::CellExecute {
            path: a.path,
            cell: a.cell.into(),
            timeout_ms,
            output_cap,
            revision: a.revision,
        }
    }
);

notebook_tool!(
    CodeExecute,
    "code_execute",
    "Run code in a kernel without touching a notebook file: a scratch kernel, or a notebook's kernel to inspect its state.",
    |nb, a, cx: CodeArgs| {
        let (timeout_ms, output_cap) = nb.limits(Self::NAME, &cx.caller, a.timeout_s)?;
        JupyterOp::CodeExecute {
            code: a.code.into(),
            kernel: a.kernel,
            kernel_name: a.kernel_name,
            timeout_ms,
            output_cap,
        }
    }
);

notebook_tool!(
    KernelList,
    "kernel_list",
    "List your running kernels (state, execution count, memory) and the kernelspecs your room offers.",
    |_, NoArgs {}, cx: NoArgs| JupyterOp::KernelList
);

notebook_tool!(
    KernelInterrupt,
    "kernel_interrupt",
    "Interrupt what a kernel is running; its variables are kept.",
    |_, a, cx: KernelArgs| JupyterOp::KernelInterrupt { kernel: a.kernel }
);

notebook_tool!(
    KernelRestart,
    "kernel_restart",
    "Restart a kernel (its variables are lost); also brings back a dead kernel.",
    |_, a, cx: KernelArgs| JupyterOp::KernelRestart { kernel: a.kernel }
);

notebook_tool!(
    KernelShutdown,
    "kernel_shutdown",
    "Stop a kernel and free its memory.",
    |_, a, cx: KernelArgs| JupyterOp::KernelShutdown { kernel: a.kernel }
);

/// Requests that run code (and so may take long).
fn runs_code(request: &JupyterOp) -> bool {
    matches!(
        request,
        JupyterOp::CellExecute { .. }
            | JupyterOp::NotebookExecute { .. }
            | JupyterOp::CodeExecute { .. }
    )
}

/// Sends `running for N s` progress every second until aborted.
async fn tick(sink: NoticeSink) {
    let started = std::time::Instant::now();
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let seconds = started.elapsed().as_secs_f64().round();
        let update = Progress {
            progress: seconds,
            total: None,
            message: Some(format!("running for {seconds} s")),
        };
        if sink.send(Notice::Progress(update)).is_err() {
            return;
        }
    }
}

/// A room's answer as the tool result.
fn present(result: JupyterResult) -> CallToolResult {
    match result {
        JupyterResult::Notebook { text, outputs, .. } => {
            let mut content = vec![ContentBlock::text(text)];
            content.extend(parts(&outputs));
            CallToolResult::success(content)
        }
        JupyterResult::Executed {
            kernel,
            path,
            revision,
            runs,
        } => executed(&kernel, path, revision, &runs),
        other => {
            let text = match &other {
                JupyterResult::Changed { .. } => changed_text(&other),
                JupyterResult::Done { message } => message.clone(),
                _ => String::new(),
            };
            let mut value = serde_json::to_value(&other).unwrap_or(Value::Null);
            if let Some(o) = value.as_object_mut() {
                o.remove("result");
            }
            if text.is_empty() {
                CallToolResult::structured(value)
            } else {
                structured_with_text(value, text)
            }
        }
    }
}

fn changed_text(changed: &JupyterResult) -> String {
    match changed {
        JupyterResult::Changed {
            path,
            revision,
            cells,
            index,
            cell_id,
        } => {
            let cell = match (index, cell_id) {
                (Some(i), Some(id)) => format!("cell {i} (id {id}) · "),
                _ => String::new(),
            };
            format!("{path}: {cell}{cells} cells · revision {revision}")
        }
        _ => String::new(),
    }
}

/// Runs as content: per run a header line (cell, execution count, status), then its outputs;
/// the summary as structured content. Only a dead kernel makes it an error result: code that
/// raised is an ordinary outcome the caller reads.
fn executed(
    kernel: &str,
    path: Option<String>,
    revision: Option<String>,
    runs: &[Run],
) -> CallToolResult {
    let mut content = Vec::new();
    for run in runs {
        let mut header = match (run.index, &run.cell_id) {
            (Some(i), Some(id)) => format!("[cell {i} · id {id}"),
            (Some(i), None) => format!("[cell {i}"),
            _ => format!("[kernel {kernel}"),
        };
        if let Some(n) = run.execution_count {
            header.push_str(&format!(" · In [{n}]"));
        }
        header.push_str(&format!(" · {}]", status_text(run.status)));
        if let Some(why) = &run.not_saved {
            header.push_str(&format!("\nnot saved: {why}"));
        }
        content.push(ContentBlock::text(header));
        content.extend(parts(&run.outputs));
    }
    let summary: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "index": r.index,
                "cell_id": r.cell_id,
                "execution_count": r.execution_count,
                "status": r.status,
                "truncated": r.truncated,
                "not_saved": r.not_saved,
            })
        })
        .collect();
    let died = runs.iter().any(|r| r.status == RunStatus::KernelDied);
    let mut result = if died {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    };
    result.structured_content = Some(json!({
        "kernel": kernel,
        "path": path,
        "revision": revision,
        "runs": summary,
    }));
    result
}

fn status_text(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Ok => "ok",
        RunStatus::Error => "error",
        RunStatus::TimedOut => "timed out: the kernel was interrupted, its state is kept",
        RunStatus::Interrupted => "interrupted",
        RunStatus::KernelDied => "the kernel died",
        RunStatus::Skipped => "skipped: an earlier cell failed",
    }
}

fn parts(outputs: &[lodge_kernel::Output]) -> Vec<ContentBlock> {
    to_parts(outputs)
        .into_iter()
        .map(|part| match part {
            Part::Text(text) => ContentBlock::text(text),
            Part::Image { mime, data } => ContentBlock::image(data, mime),
        })
        .collect()
}
