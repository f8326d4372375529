//! nbformat 4 notebooks as data: parse, edit, write back byte for byte as Jupyter writes them,
//! and render as text for an agent. Whatever it does not understand is kept, so a round trip
//! loses nothing. It must not touch files or processes: callers read and write the bytes.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::output::{Output, mime_text, strip_ansi};

/// The nbformat minor version Lodge writes: the first with cell ids.
const MINOR_WITH_IDS: u64 = 5;

/// Compact rendering: source lines shown per cell.
const COMPACT_SOURCE_LINES: usize = 8;
/// Compact rendering: lines and characters shown per output.
const COMPACT_OUTPUT_LINES: usize = 5;
const COMPACT_OUTPUT_CHARS: usize = 400;
/// Compact rendering: traceback lines shown per error (the last ones say what went wrong).
const COMPACT_TRACEBACK_LINES: usize = 3;

/// Marks every line of an output in a rendering, so outputs cannot be mistaken for source.
const OUTPUT_MARK: &str = "│ ";

/// Text forms of a display bundle, best first, when it has no image.
const TEXT_TYPES: [&str; 5] = [
    "text/plain",
    "text/markdown",
    "text/latex",
    "text/html",
    "application/json",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellType {
    Code,
    Markdown,
    Raw,
}

impl CellType {
    pub fn as_str(self) -> &'static str {
        match self {
            CellType::Code => "code",
            CellType::Markdown => "markdown",
            CellType::Raw => "raw",
        }
    }

    fn parse(name: &str) -> Option<CellType> {
        match name {
            "code" => Some(CellType::Code),
            "markdown" => Some(CellType::Markdown),
            "raw" => Some(CellType::Raw),
            _ => None,
        }
    }
}

impl fmt::Display for CellType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cell named by a client: its index (negative counts from the end, -1 is the last) or its
/// id. An id that matches no cell but reads as a number is taken as an index, because clients
/// often send indexes as strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CellRef {
    Index(i64),
    Id(String),
}

#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    #[error(
        "the notebook is not valid JSON ({0}); fix the file at that place, or restore it from a \
         backup or version control"
    )]
    InvalidJson(serde_json::Error),
    #[error("this is not a Jupyter notebook: {0}; check that the path names an .ipynb file")]
    NotANotebook(String),
    #[error(
        "nbformat {0} is not supported; Lodge reads nbformat 4: convert it with \
         `jupyter nbconvert --to notebook`"
    )]
    UnsupportedVersion(String),
    #[error("cell {index} of the notebook is invalid: {reason}; fix that cell in the file")]
    InvalidCell { index: usize, reason: String },
    #[error("no cell has id {id:?} ({count}); cell ids are shown by notebook_read")]
    NoSuchCell { id: String, count: CellCount },
    #[error("cell index {index} is out of range: {}", range_hint(*.len))]
    IndexOutOfRange { index: i64, len: usize },
    #[error(
        "cannot insert at index {index}: the notebook has {len} cells, so the index must be \
         0 to {len} ({len} appends; or leave it out to append)"
    )]
    InsertOutOfRange { index: usize, len: usize },
    #[error(
        "cell {index} is a {cell_type} cell, not a code cell; only code cells have outputs \
         (change its type with cell_edit first)"
    )]
    NotACodeCell { index: usize, cell_type: CellType },
    #[error(
        "an output could not be stored as JSON ({0}); this is a bug in Lodge, please report it"
    )]
    Output(serde_json::Error),
}

/// How many cells a notebook has, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellCount(pub usize);

impl fmt::Display for CellCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("the notebook has no cells"),
            1 => f.write_str("the notebook has 1 cell"),
            n => write!(f, "the notebook has {n} cells"),
        }
    }
}

fn range_hint(len: usize) -> String {
    if len == 0 {
        return "the notebook has no cells".to_string();
    }
    format!(
        "{}, so indexes go from 0 to {} (or -{len} to -1 counting from the end)",
        CellCount(len),
        len - 1
    )
}

/// The revision of a notebook file: the first 16 hex digits of the SHA-256 of its bytes. A
/// client sends back the revision it read so that edits made outside Lodge are not overwritten.
pub fn revision(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

/// An nbformat 4.5 notebook. Every key Lodge does not interpret (top-level, metadata, cell
/// keys, attachments, outputs) is kept as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Notebook {
    nbformat_minor: u64,
    metadata: Map<String, Value>,
    cells: Vec<Cell>,
    /// Top-level keys other than nbformat, nbformat_minor, metadata and cells.
    extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
struct Cell {
    id: String,
    cell_type: CellType,
    /// Joined into one string; written as a list of lines, as Jupyter does.
    source: String,
    metadata: Map<String, Value>,
    /// Code cells only (the schema forbids them elsewhere); kept as raw JSON so nothing in
    /// them is lost.
    outputs: Vec<Value>,
    execution_count: Option<i64>,
    /// Other keys, such as a markdown cell's attachments.
    extra: Map<String, Value>,
}

impl Notebook {
    /// Reads a notebook file's bytes. Notebooks older than 4.5 are upgraded (every cell gets an
    /// id), and missing, invalid or duplicate ids are replaced, so every cell can be named.
    pub fn parse(bytes: &[u8]) -> Result<Notebook, NotebookError> {
        let value: Value = serde_json::from_slice(bytes).map_err(NotebookError::InvalidJson)?;
        let Value::Object(mut top) = value else {
            return Err(NotebookError::NotANotebook(format!(
                "the file holds {} rather than a JSON object",
                kind(&value)
            )));
        };
        check_version(top.remove("nbformat"))?;
        let minor = match top.remove("nbformat_minor") {
            None => 0,
            Some(value) => value.as_u64().ok_or_else(|| {
                NotebookError::NotANotebook(format!(
                    "its nbformat_minor is {} rather than a number",
                    kind(&value)
                ))
            })?,
        };
        let mut metadata = match top.remove("metadata") {
            None => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(NotebookError::NotANotebook(format!(
                    "its metadata is {} rather than an object",
                    kind(&other)
                )));
            }
        };
        strip_transient(&mut metadata);
        let cells = match top.remove("cells") {
            Some(Value::Array(cells)) => cells,
            Some(other) => {
                return Err(NotebookError::NotANotebook(format!(
                    "its `cells` is {} rather than a list",
                    kind(&other)
                )));
            }
            None => {
                return Err(NotebookError::NotANotebook(
                    "it has no `cells` list".to_string(),
                ));
            }
        };
        let cells = cells
            .into_iter()
            .enumerate()
            .map(|(index, cell)| Cell::parse(index, cell))
            .collect::<Result<Vec<_>, _>>()?;
        let mut notebook = Notebook {
            nbformat_minor: minor.max(MINOR_WITH_IDS),
            metadata,
            cells,
            extra: top,
        };
        // Before 4.5 ids were not part of the format, so whatever is there is not trusted.
        notebook.repair_ids(minor < MINOR_WITH_IDS);
        Ok(notebook)
    }

    /// An empty notebook for a kernelspec.
    pub fn new(kernel_name: &str, display_name: &str, language: &str) -> Notebook {
        let kernelspec = Map::from_iter([
            ("name".to_string(), Value::from(kernel_name)),
            ("display_name".to_string(), Value::from(display_name)),
            ("language".to_string(), Value::from(language)),
        ]);
        let language_info = Map::from_iter([("name".to_string(), Value::from(language))]);
        Notebook {
            nbformat_minor: MINOR_WITH_IDS,
            metadata: Map::from_iter([
                ("kernelspec".to_string(), Value::Object(kernelspec)),
                ("language_info".to_string(), Value::Object(language_info)),
            ]),
            cells: Vec::new(),
            extra: Map::new(),
        }
    }

    /// The file's bytes, exactly as Jupyter (PyPI nbformat) writes them: keys sorted, one space
    /// of indent, multi-line text as lists of lines, non-ASCII kept, a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        write_json(&mut out, &self.file_value(), 0);
        out.push('\n');
        out.into_bytes()
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The index of the cell a client named.
    pub fn resolve(&self, cell: &CellRef) -> Result<usize, NotebookError> {
        match cell {
            CellRef::Index(index) => self.resolve_index(*index),
            CellRef::Id(id) => {
                if let Some(index) = self.cells.iter().position(|c| &c.id == id) {
                    return Ok(index);
                }
                match id.trim().parse::<i64>() {
                    Ok(index) => self.resolve_index(index),
                    Err(_) => Err(NotebookError::NoSuchCell {
                        id: id.clone(),
                        count: CellCount(self.len()),
                    }),
                }
            }
        }
    }

    fn resolve_index(&self, index: i64) -> Result<usize, NotebookError> {
        let len = self.len();
        let out_of_range = || NotebookError::IndexOutOfRange { index, len };
        let resolved = if index < 0 {
            let back = usize::try_from(index.unsigned_abs()).map_err(|_| out_of_range())?;
            len.checked_sub(back).ok_or_else(out_of_range)?
        } else {
            usize::try_from(index).map_err(|_| out_of_range())?
        };
        if resolved < len {
            Ok(resolved)
        } else {
            Err(out_of_range())
        }
    }

    pub fn cell_id(&self, i: usize) -> Option<&str> {
        self.cells.get(i).map(|c| c.id.as_str())
    }

    pub fn cell_type(&self, i: usize) -> Option<CellType> {
        self.cells.get(i).map(|c| c.cell_type)
    }

    pub fn source(&self, i: usize) -> Option<String> {
        self.cells.get(i).map(|c| c.source.clone())
    }

    /// A code cell's execution count (`None` when not run, or not a code cell).
    pub fn execution_count(&self, i: usize) -> Option<i64> {
        self.cells.get(i).and_then(|c| c.execution_count)
    }

    /// A code cell's outputs; outputs that are not valid nbformat are left out.
    pub fn outputs(&self, i: usize) -> Vec<Output> {
        self.cells
            .get(i)
            .map(|c| c.outputs.iter().filter_map(Output::from_json).collect())
            .unwrap_or_default()
    }

    /// Indexes of the code cells, in order.
    pub fn code_cells(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.cells[i].cell_type == CellType::Code)
            .collect()
    }

    /// `metadata.kernelspec.name`: the kernelspec the notebook runs with.
    pub fn kernel_name(&self) -> Option<String> {
        self.metadata
            .get("kernelspec")?
            .get("name")?
            .as_str()
            .map(str::to_string)
    }

    /// Adds a cell at `index` (appends when `None`); returns its index and new id.
    pub fn insert(
        &mut self,
        index: Option<usize>,
        cell_type: CellType,
        source: &str,
    ) -> Result<(usize, String), NotebookError> {
        let len = self.len();
        let index = index.unwrap_or(len);
        if index > len {
            return Err(NotebookError::InsertOutOfRange { index, len });
        }
        let id = self.fresh_id();
        let cell = Cell {
            id: id.clone(),
            cell_type,
            source: source.to_string(),
            metadata: Map::new(),
            outputs: Vec::new(),
            execution_count: None,
            extra: Map::new(),
        };
        self.cells.insert(index, cell);
        Ok((index, id))
    }

    /// Replaces a cell's source, and its type when given. A code cell's outputs no longer match
    /// its source, so they are cleared.
    pub fn edit(
        &mut self,
        i: usize,
        source: &str,
        cell_type: Option<CellType>,
    ) -> Result<(), NotebookError> {
        let cell = self.cell_mut(i)?;
        cell.source = source.to_string();
        cell.outputs.clear();
        cell.execution_count = None;
        if let Some(cell_type) = cell_type {
            cell.set_type(cell_type);
        }
        Ok(())
    }

    /// Moves cell `from` so that it ends up at index `to`.
    pub fn move_cell(&mut self, from: usize, to: usize) -> Result<(), NotebookError> {
        let len = self.len();
        for index in [from, to] {
            if index >= len {
                return Err(NotebookError::IndexOutOfRange {
                    index: i64::try_from(index).unwrap_or(i64::MAX),
                    len,
                });
            }
        }
        let cell = self.cells.remove(from);
        self.cells.insert(to, cell);
        Ok(())
    }

    /// Removes a cell; returns its id.
    pub fn delete(&mut self, i: usize) -> Result<String, NotebookError> {
        self.cell_mut(i)?;
        Ok(self.cells.remove(i).id)
    }

    /// Stores what running a code cell produced.
    pub fn set_outputs(
        &mut self,
        i: usize,
        outputs: &[Output],
        execution_count: Option<i64>,
    ) -> Result<(), NotebookError> {
        let cell = self.cell_mut(i)?;
        if cell.cell_type != CellType::Code {
            return Err(NotebookError::NotACodeCell {
                index: i,
                cell_type: cell.cell_type,
            });
        }
        cell.outputs = outputs
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .map_err(NotebookError::Output)?;
        cell.execution_count = execution_count;
        Ok(())
    }

    /// The notebook as text for an agent: a header line, then each cell with its outputs.
    /// `compact` shortens long sources, outputs and tracebacks; `start..end` selects cells
    /// (clamped to the notebook).
    pub fn render(
        &self,
        path: &str,
        revision: &str,
        compact: bool,
        start: Option<usize>,
        end: Option<usize>,
    ) -> String {
        let len = self.len();
        let end = end.unwrap_or(len).min(len);
        let start = start.unwrap_or(0).min(end);
        let kernel = self.kernel_name().unwrap_or_else(|| "not set".to_string());
        let cells = match len {
            1 => "1 cell".to_string(),
            n => format!("{n} cells"),
        };
        let mut out = format!("notebook {path} · {cells} · kernel {kernel} · revision {revision}");
        if (start, end) != (0, len) {
            out.push_str(&match end - start {
                0 => " · showing no cells (the range selects none)".to_string(),
                1 => format!(" · showing cell {start} only"),
                _ => format!(" · showing cells {start} to {}", end - 1),
            });
        }
        out.push('\n');
        for i in start..end {
            out.push('\n');
            out.push_str(&self.render_at(i, compact));
        }
        out
    }

    /// One cell in full, with its outputs (a note when there is no cell `i`).
    pub fn render_cell(&self, i: usize) -> String {
        if i >= self.len() {
            return format!("no cell {i}: {}\n", CellCount(self.len()));
        }
        self.render_at(i, false)
    }

    fn render_at(&self, i: usize, compact: bool) -> String {
        let cell = &self.cells[i];
        let mut out = format!("[{i}] {} · id {}", cell.cell_type, cell.id);
        if let Some(count) = cell.execution_count {
            out.push_str(&format!(" · In [{count}]"));
        }
        out.push('\n');
        out.push_str(&render_source(&cell.source, compact));
        for output in cell.outputs.iter().filter_map(Output::from_json) {
            let text = render_output(&output, compact);
            let text = if compact {
                shorten(&text, COMPACT_OUTPUT_LINES, COMPACT_OUTPUT_CHARS)
            } else {
                text
            };
            for line in text.lines() {
                out.push_str(OUTPUT_MARK);
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn cell_mut(&mut self, i: usize) -> Result<&mut Cell, NotebookError> {
        let len = self.len();
        self.cells
            .get_mut(i)
            .ok_or_else(|| NotebookError::IndexOutOfRange {
                index: i64::try_from(i).unwrap_or(i64::MAX),
                len,
            })
    }

    /// An id no cell has, in the form nbformat generates (8 hex digits).
    fn fresh_id(&self) -> String {
        loop {
            let uuid = uuid::Uuid::new_v4().simple().to_string();
            let id = &uuid[..8];
            if !self.cells.iter().any(|c| c.id == id) {
                return id.to_string();
            }
        }
    }

    /// Gives a fresh id to every cell whose id is missing, invalid or a repeat (or to all).
    fn repair_ids(&mut self, all: bool) {
        let mut seen = HashSet::new();
        let mut broken = Vec::new();
        for (i, cell) in self.cells.iter().enumerate() {
            if all || !valid_id(&cell.id) || !seen.insert(cell.id.clone()) {
                broken.push(i);
            }
        }
        for i in broken {
            // Checked against every id still present, so a new id never repeats an old one.
            self.cells[i].id = self.fresh_id();
        }
    }

    /// The notebook as its file stores it.
    fn file_value(&self) -> Value {
        let mut top = self.extra.clone();
        let cells = self.cells.iter().map(Cell::file_value).collect();
        top.insert("cells".to_string(), Value::Array(cells));
        top.insert("metadata".to_string(), Value::Object(self.metadata.clone()));
        top.insert("nbformat".to_string(), Value::from(4));
        top.insert(
            "nbformat_minor".to_string(),
            Value::from(self.nbformat_minor),
        );
        Value::Object(top)
    }
}

impl Cell {
    fn parse(index: usize, value: Value) -> Result<Cell, NotebookError> {
        let invalid = |reason: String| NotebookError::InvalidCell { index, reason };
        let Value::Object(mut map) = value else {
            return Err(invalid(format!(
                "it is {} rather than an object",
                kind(&value)
            )));
        };
        let cell_type = match map.remove("cell_type") {
            Some(Value::String(name)) => CellType::parse(&name).ok_or_else(|| {
                invalid(format!(
                    "its cell_type {name:?} is not one of code, markdown or raw"
                ))
            })?,
            Some(other) => {
                return Err(invalid(format!(
                    "its cell_type is {} rather than a string",
                    kind(&other)
                )));
            }
            None => return Err(invalid("it has no cell_type".to_string())),
        };
        let source = match map.remove("source") {
            None => String::new(),
            Some(value) => joined(&value).ok_or_else(|| {
                invalid("its source is neither a string nor a list of strings".to_string())
            })?,
        };
        let mut metadata = match map.remove("metadata") {
            None => Map::new(),
            Some(Value::Object(metadata)) => metadata,
            Some(other) => {
                return Err(invalid(format!(
                    "its metadata is {} rather than an object",
                    kind(&other)
                )));
            }
        };
        // Trust is a property of the reader, not of the file (nbformat strips it too).
        metadata.remove("trusted");
        // Not a string or missing: `repair_ids` gives it a fresh one.
        let id = match map.remove("id") {
            Some(Value::String(id)) => id,
            _ => String::new(),
        };
        if let Some(Value::Object(attachments)) = map.get_mut("attachments") {
            attachments.values_mut().for_each(rejoin_bundle);
        }
        let mut cell = Cell {
            id,
            cell_type,
            source,
            metadata,
            outputs: Vec::new(),
            execution_count: None,
            extra: Map::new(),
        };
        if cell_type == CellType::Code {
            cell.outputs = match map.remove("outputs") {
                None => Vec::new(),
                Some(Value::Array(outputs)) => outputs.into_iter().map(rejoin_output).collect(),
                Some(other) => {
                    return Err(invalid(format!(
                        "its outputs are {} rather than a list",
                        kind(&other)
                    )));
                }
            };
            cell.execution_count = match map.remove("execution_count") {
                None | Some(Value::Null) => None,
                Some(count) => Some(count.as_i64().ok_or_else(|| {
                    invalid(format!(
                        "its execution_count is {} rather than a whole number or null",
                        kind(&count)
                    ))
                })?),
            };
        }
        cell.extra = map;
        Ok(cell)
    }

    /// Changes the type, adding and removing keys so the cell stays valid for the schema.
    fn set_type(&mut self, cell_type: CellType) {
        if cell_type == self.cell_type {
            return;
        }
        if cell_type == CellType::Code {
            // Code cells may have none of these; a markdown cell's attachments go with them.
            for key in ["outputs", "execution_count", "attachments"] {
                self.extra.remove(key);
            }
        }
        self.outputs.clear();
        self.execution_count = None;
        self.cell_type = cell_type;
    }

    fn file_value(&self) -> Value {
        let mut map = self.extra.clone();
        if let Some(Value::Object(attachments)) = map.get_mut("attachments") {
            for bundle in attachments.values_mut() {
                if let Value::Object(bundle) = bundle {
                    split_bundle(bundle);
                }
            }
        }
        map.insert("id".to_string(), Value::from(self.id.as_str()));
        map.insert(
            "cell_type".to_string(),
            Value::from(self.cell_type.as_str()),
        );
        map.insert("metadata".to_string(), Value::Object(self.metadata.clone()));
        map.insert("source".to_string(), lines_value(&self.source));
        if self.cell_type == CellType::Code {
            let outputs = self.outputs.iter().cloned().map(split_output).collect();
            map.insert("outputs".to_string(), Value::Array(outputs));
            map.insert(
                "execution_count".to_string(),
                self.execution_count.map_or(Value::Null, Value::from),
            );
        }
        Value::Object(map)
    }
}

fn check_version(nbformat: Option<Value>) -> Result<(), NotebookError> {
    match nbformat {
        None => Err(NotebookError::NotANotebook(
            "it has no `nbformat` version number".to_string(),
        )),
        Some(Value::Number(n)) if n.as_u64() == Some(4) => Ok(()),
        Some(Value::Number(n)) => Err(NotebookError::UnsupportedVersion(n.to_string())),
        Some(other) => Err(NotebookError::NotANotebook(format!(
            "its nbformat is {} rather than a number",
            kind(&other)
        ))),
    }
}

/// Drops what nbformat never stores in a file (it strips these on read and on write).
fn strip_transient(metadata: &mut Map<String, Value>) {
    for key in ["orig_nbformat", "orig_nbformat_minor", "signature"] {
        metadata.remove(key);
    }
}

/// nbformat 4.5's rule for cell ids.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What kind of JSON value this is, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A string, or a list of strings joined (nbformat stores multi-line text either way).
fn joined(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// MIME types whose values nbformat leaves alone on read: JSON data, not text.
fn is_json_mime(mime: &str) -> bool {
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// MIME types nbformat writes as lists of lines.
fn is_split_mime(mime: &str) -> bool {
    mime.starts_with("text/") || mime == "application/javascript" || mime == "image/svg+xml"
}

/// Joins a MIME bundle's line lists, as nbformat does on read.
fn rejoin_bundle(bundle: &mut Value) {
    let Value::Object(bundle) = bundle else {
        return;
    };
    for (mime, value) in bundle.iter_mut() {
        if !is_json_mime(mime)
            && value.is_array()
            && let Some(text) = joined(value)
        {
            *value = Value::String(text);
        }
    }
}

/// Joins an output's line lists, as nbformat does on read.
fn rejoin_output(mut output: Value) -> Value {
    let output_type = output
        .get("output_type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match output_type.as_str() {
        "" => {}
        "execute_result" | "display_data" => {
            if let Some(data) = output.get_mut("data") {
                rejoin_bundle(data);
            }
        }
        _ => {
            if let Some(text) = output.get_mut("text")
                && text.is_array()
                && let Some(joined) = joined(text)
            {
                *text = Value::String(joined);
            }
        }
    }
    output
}

/// Splits a MIME bundle's text into lines, as nbformat does on write.
fn split_bundle(bundle: &mut Map<String, Value>) {
    for (mime, value) in bundle.iter_mut() {
        if is_split_mime(mime)
            && let Value::String(text) = value
        {
            *value = lines_value(text);
        }
    }
}

/// Splits an output's text into lines, as nbformat does on write.
fn split_output(mut output: Value) -> Value {
    match output.get("output_type").and_then(Value::as_str) {
        Some("execute_result" | "display_data") => {
            if let Some(Value::Object(data)) = output.get_mut("data") {
                split_bundle(data);
            }
        }
        Some("stream") => {
            if let Some(text) = output.get_mut("text")
                && let Value::String(s) = text
            {
                *text = lines_value(s);
            }
        }
        _ => {}
    }
    output
}

fn lines_value(text: &str) -> Value {
    Value::Array(split_lines(text).into_iter().map(Value::from).collect())
}

/// Lines with their endings, split where Python's `str.splitlines` splits (nbformat uses it,
/// and a file must come out as Jupyter would write it).
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let end = match c {
            '\r' => match chars.peek() {
                Some((next, '\n')) => {
                    let end = next + 1;
                    chars.next();
                    end
                }
                _ => at + 1,
            },
            '\n' | '\u{0b}' | '\u{0c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}'
            | '\u{2029}' => at + c.len_utf8(),
            _ => continue,
        };
        lines.push(&text[start..end]);
        start = end;
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Writes JSON as Python's `json.dumps(indent=1, sort_keys=True, ensure_ascii=False)` does.
/// Keys are sorted here rather than trusting `Map`'s order, which another crate in the build
/// could change by enabling serde_json's `preserve_order`.
fn write_json(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                indent(out, depth + 1);
                write_json(out, item, depth + 1);
            }
            out.push('\n');
            indent(out, depth);
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                indent(out, depth + 1);
                write_string(out, key);
                out.push_str(": ");
                write_json(out, item, depth + 1);
            }
            out.push('\n');
            indent(out, depth);
            out.push('}');
        }
    }
}

fn indent(out: &mut String, depth: usize) {
    out.extend(std::iter::repeat_n(' ', depth));
}

/// A JSON string escaped as Python's json module escapes it with `ensure_ascii=False`.
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&python_float(f));
    } else {
        out.push_str(&n.to_string());
    }
}

/// A float as Python's `repr` writes it (json uses it): the shortest digits that read back
/// the same, in exponent form when the exponent is below -4 or above 15 (`1e-05`, `1e+16`),
/// else positional with at least one decimal (`100.0`).
fn python_float(f: f64) -> String {
    // Rust's `{:e}` gives the same shortest digits, as `d.ddde±x`.
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if !(-4..16).contains(&exponent) {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs());
    }
    let point = exponent + 1;
    let count = digits.len() as i64;
    let positional = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point >= count {
        format!("{digits}{}.0", "0".repeat((point - count) as usize))
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{whole}.{fraction}")
    };
    format!("{sign}{positional}")
}

fn render_source(source: &str, compact: bool) -> String {
    if source.is_empty() {
        return "(empty)\n".to_string();
    }
    let lines: Vec<&str> = source.lines().collect();
    let shown = if compact {
        COMPACT_SOURCE_LINES.min(lines.len())
    } else {
        lines.len()
    };
    let mut out = String::new();
    for line in &lines[..shown] {
        out.push_str(line);
        out.push('\n');
    }
    if shown < lines.len() {
        out.push_str(&format!("… ({} more lines)\n", lines.len() - shown));
    }
    out
}

/// One output as plain text: no ANSI codes, no image data.
fn render_output(output: &Output, compact: bool) -> String {
    match output {
        Output::Stream { name, text } => {
            let text = settle_carriage_returns(&strip_ansi(text));
            if name == "stderr" {
                format!("[stderr] {text}")
            } else {
                text
            }
        }
        Output::DisplayData { data, .. } => render_bundle(data),
        Output::ExecuteResult {
            execution_count,
            data,
            ..
        } => match execution_count {
            Some(n) => format!("Out[{n}]: {}", render_bundle(data)),
            None => render_bundle(data),
        },
        Output::Error {
            ename,
            evalue,
            traceback,
        } => {
            let traceback = strip_ansi(&traceback.join("\n"));
            let lines: Vec<&str> = traceback.lines().collect();
            let keep = if compact {
                COMPACT_TRACEBACK_LINES.min(lines.len())
            } else {
                lines.len()
            };
            let mut text = format!("{ename}: {evalue}");
            if keep < lines.len() {
                text.push_str(&format!(
                    "\n… ({} earlier traceback lines)",
                    lines.len() - keep
                ));
            }
            for line in &lines[lines.len() - keep..] {
                text.push('\n');
                text.push_str(line);
            }
            text
        }
    }
}

/// A display bundle as text: a placeholder for each image (the data never goes into text),
/// then the best text form.
fn render_bundle(data: &Map<String, Value>) -> String {
    let images: Vec<String> = data
        .iter()
        .filter(|(mime, _)| mime.starts_with("image/"))
        .map(|(mime, value)| {
            let text = mime_text(value).unwrap_or_default();
            let size = if mime == "image/svg+xml" {
                text.len()
            } else {
                base64_size(&text)
            };
            format!("[{mime}, {}]", human_size(size))
        })
        .collect();
    let text = TEXT_TYPES.iter().find_map(|mime| {
        let value = data.get(*mime)?;
        match value {
            Value::Object(_) => serde_json::to_string_pretty(value).ok(),
            _ => mime_text(value),
        }
    });
    if images.is_empty() {
        return match text {
            Some(text) => strip_ansi(&text),
            None => {
                let kinds: Vec<&str> = data.keys().map(String::as_str).collect();
                format!("[output of type {}]", kinds.join(", "))
            }
        };
    }
    let mut out = images.join("\n");
    // An image's text/plain (such as `<Figure size 640x480 with 1 Axes>`) says what it shows.
    if let Some(plain) = data.get("text/plain").and_then(mime_text) {
        out.push('\n');
        out.push_str(&strip_ansi(&plain));
    }
    out
}

/// Each line as a terminal would leave it: progress bars rewrite a line after `\r`.
fn settle_carriage_returns(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    if !text.contains('\r') {
        return text;
    }
    text.split('\n')
        .map(|line| line.rsplit('\r').next().unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// At most `max_lines` lines and `max_chars` characters, with a note saying how much is left.
fn shorten(text: &str, max_lines: usize, max_chars: usize) -> String {
    let total = text.chars().count();
    let mut kept: String = text
        .split_inclusive('\n')
        .take(max_lines)
        .collect::<String>()
        .chars()
        .take(max_chars)
        .collect();
    let hidden = total - kept.chars().count();
    if hidden == 0 {
        return kept;
    }
    if !kept.ends_with('\n') {
        kept.push('\n');
    }
    kept.push_str(&format!("… ({hidden} more characters)"));
    kept
}

/// Bytes encoded by a base64 string (whitespace ignored).
fn base64_size(data: &str) -> usize {
    let symbols: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let padding = symbols.iter().rev().take_while(|&&b| b == b'=').count();
    (symbols.len() * 3 / 4).saturating_sub(padding)
}

fn human_size(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    let size = bytes as f64;
    if size < KIB {
        format!("{bytes} B")
    } else if size < KIB * KIB {
        format!("{:.1} KiB", size / KIB)
    } else {
        format!("{:.1} MiB", size / (KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A 4.5 notebook exactly as PyPI nbformat writes it (checked with nbformat 5.10): sorted
    /// keys, one-space indent, lines as lists, non-ASCII kept, unknown keys everywhere.
    const JUPYTER_WRITTEN: &str = r##"{
 "cells": [
  {
   "attachments": {
    "a.png": {
     "image/png": "iVBORw0KGgo="
    }
   },
   "cell_type": "markdown",
   "id": "intro",
   "metadata": {
    "tags": [
     "héllo"
    ]
   },
   "source": [
    "# Title ✓\n",
    "![a](attachment:a.png)"
   ]
  },
  {
   "cell_type": "code",
   "execution_count": 2,
   "id": "a1b2c3d4",
   "metadata": {
    "collapsed": false,
    "scrolled": 0.5
   },
   "outputs": [
    {
     "name": "stdout",
     "output_type": "stream",
     "text": [
      "1\n",
      "2\n"
     ]
    },
    {
     "data": {
      "application/json": {
       "k": [
        1,
        2.5e-07
       ]
      },
      "image/png": "iVBORw0KGgo=",
      "text/plain": [
       "<Figure>\n",
       "line two"
      ]
     },
     "metadata": {},
     "output_type": "display_data"
    },
    {
     "data": {
      "text/plain": [
       "3"
      ]
     },
     "execution_count": 2,
     "metadata": {},
     "output_type": "execute_result"
    },
    {
     "ename": "ValueError",
     "evalue": "bad \"x\"",
     "output_type": "error",
     "traceback": [
      "\u001b[31mTraceback\u001b[0m",
      "ValueError: bad"
     ]
    }
   ],
   "source": [
    "for i in (1, 2):\n",
    "    print(i)\n",
    "1 + 2"
   ],
   "x_unknown": true
  },
  {
   "cell_type": "raw",
   "id": "raw-1",
   "metadata": {
    "format": "text/x-python"
   },
   "source": []
  }
 ],
 "metadata": {
  "kernelspec": {
   "display_name": "Python 3 (ipykernel)",
   "language": "python",
   "name": "python3"
  },
  "language_info": {
   "name": "python",
   "version": "3.11.2"
  },
  "papermill": {
   "duration": 1e+16,
   "start": 1000000000000000.0
  }
 },
 "nbformat": 4,
 "nbformat_minor": 5,
 "zz_top_level": [
  null,
  false
 ]
}
"##;

    fn sample() -> Notebook {
        Notebook::parse(JUPYTER_WRITTEN.as_bytes()).unwrap()
    }

    fn file_json(nb: &Notebook) -> Value {
        serde_json::from_slice(&nb.to_bytes()).unwrap()
    }

    #[test]
    fn a_jupyter_written_notebook_round_trips_byte_for_byte() {
        let nb = sample();
        assert_eq!(String::from_utf8(nb.to_bytes()).unwrap(), JUPYTER_WRITTEN);
        assert_eq!(Notebook::parse(&nb.to_bytes()).unwrap(), nb);
    }

    #[test]
    fn reading_joins_lines_and_keeps_what_it_does_not_know() {
        let nb = sample();
        assert_eq!(nb.len(), 3);
        assert_eq!(nb.source(0).unwrap(), "# Title ✓\n![a](attachment:a.png)");
        assert_eq!(nb.cell_type(1), Some(CellType::Code));
        assert_eq!(nb.cell_id(2), Some("raw-1"));
        assert_eq!(nb.source(2).unwrap(), "");
        assert_eq!(nb.execution_count(1), Some(2));
        assert_eq!(nb.kernel_name().as_deref(), Some("python3"));
        assert_eq!(nb.code_cells(), [1]);
        let outputs = nb.outputs(1);
        assert_eq!(outputs.len(), 4);
        assert_eq!(
            outputs[0],
            Output::Stream {
                name: "stdout".into(),
                text: "1\n2\n".into()
            }
        );
        assert!(nb.outputs(0).is_empty());
        assert!(nb.outputs(9).is_empty());
        assert_eq!(nb.cells[1].extra.get("x_unknown"), Some(&json!(true)));
    }

    #[test]
    fn an_older_notebook_is_upgraded_to_4_5_with_ids_and_transient_keys_dropped() {
        let old = json!({
            "cells": [
                {"cell_type": "markdown", "metadata": {}, "source": ["# hi\n", "there"]},
                {"cell_type": "code", "execution_count": 1, "metadata": {"trusted": true},
                 "outputs": [{"name": "stdout", "output_type": "stream", "text": ["a\n", "b"]}],
                 "source": "print(1)"},
                {"cell_type": "code", "metadata": {}, "source": "x"}
            ],
            "metadata": {"signature": "sha256:x", "orig_nbformat": 3},
            "nbformat": 4,
            "nbformat_minor": 4
        });
        let nb = Notebook::parse(old.to_string().as_bytes()).unwrap();
        let file = file_json(&nb);
        assert_eq!(file["nbformat_minor"], 5);
        assert_eq!(file["metadata"], json!({}));
        for (i, cell) in file["cells"].as_array().unwrap().iter().enumerate() {
            let id = cell["id"].as_str().unwrap();
            assert!(valid_id(id) && id.len() == 8, "{id}");
            assert_eq!(nb.cell_id(i), Some(id));
        }
        assert_eq!(file["cells"][1]["metadata"], json!({}));
        assert_eq!(file["cells"][1]["outputs"][0]["text"], json!(["a\n", "b"]));
        // A code cell missing its outputs and count gets them: the schema requires both.
        assert_eq!(file["cells"][2]["outputs"], json!([]));
        assert_eq!(file["cells"][2]["execution_count"], Value::Null);
        assert!(file["cells"][0].get("outputs").is_none());
    }

    #[test]
    fn missing_invalid_and_duplicate_ids_are_replaced_and_good_ones_kept() {
        let nb = json!({
            "cells": [
                {"cell_type": "raw", "id": "same", "metadata": {}, "source": ""},
                {"cell_type": "raw", "id": "same", "metadata": {}, "source": ""},
                {"cell_type": "raw", "id": "has space", "metadata": {}, "source": ""},
                {"cell_type": "raw", "metadata": {}, "source": ""},
                {"cell_type": "raw", "id": "x".repeat(65), "metadata": {}, "source": ""},
                {"cell_type": "raw", "id": "ok_2-b", "metadata": {}, "source": ""}
            ],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5
        });
        let nb = Notebook::parse(nb.to_string().as_bytes()).unwrap();
        let ids: Vec<&str> = (0..nb.len()).filter_map(|i| nb.cell_id(i)).collect();
        assert_eq!(ids[0], "same");
        assert_eq!(ids[5], "ok_2-b");
        assert!(ids.iter().all(|id| valid_id(id)), "{ids:?}");
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 6, "{ids:?}");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let err = |bytes: &str| Notebook::parse(bytes.as_bytes()).unwrap_err().to_string();
        let e = err("{\n \"cells\": [,]\n}");
        assert!(e.contains("not valid JSON") && e.contains("line 2"), "{e}");
        let e = err(r#"{"nbformat": 3, "nbformat_minor": 0, "worksheets": []}"#);
        assert!(
            e.starts_with("nbformat 3 is not supported; Lodge reads nbformat 4: convert it with `jupyter nbconvert --to notebook`"),
            "{e}"
        );
        let e = err(r#"{"nbformat": 4, "nbformat_minor": 5, "metadata": {}}"#);
        assert!(e.contains("it has no `cells` list"), "{e}");
        let e = err(r#"{"nbformat": 4, "nbformat_minor": 5, "cells": {}}"#);
        assert!(e.contains("`cells` is an object rather than a list"), "{e}");
        let e = err(r#"[1]"#);
        assert!(e.contains("not a Jupyter notebook"), "{e}");
        let e = err(r#"{"cells": []}"#);
        assert!(e.contains("no `nbformat` version"), "{e}");
        let cells = |cells: &str| {
            err(&format!(
                r#"{{"nbformat": 4, "nbformat_minor": 5, "metadata": {{}}, "cells": {cells}}}"#
            ))
        };
        let e = cells(
            r#"[{"cell_type": "raw", "source": ""}, {"cell_type": "heading", "source": ""}]"#,
        );
        assert!(
            e.contains("cell 1 of the notebook is invalid: its cell_type \"heading\""),
            "{e}"
        );
        let e = cells(r#"[{"cell_type": "code", "source": 5}]"#);
        assert!(
            e.contains("cell 0") && e.contains("source is neither"),
            "{e}"
        );
        let e = cells(r#"[{"cell_type": "code", "source": "", "execution_count": "1"}]"#);
        assert!(e.contains("execution_count is a string"), "{e}");
        let e = cells(r#"[{"source": ""}]"#);
        assert!(e.contains("it has no cell_type"), "{e}");
    }

    #[test]
    fn a_new_notebook_names_its_kernel_and_writes_valid_4_5() {
        let nb = Notebook::new("python3", "Python 3 (ipykernel)", "python");
        assert!(nb.is_empty());
        assert_eq!(nb.kernel_name().as_deref(), Some("python3"));
        assert_eq!(
            String::from_utf8(nb.to_bytes()).unwrap(),
            "{\n \"cells\": [],\n \"metadata\": {\n  \"kernelspec\": {\n   \"display_name\": \
             \"Python 3 (ipykernel)\",\n   \"language\": \"python\",\n   \"name\": \"python3\"\n  \
             },\n  \"language_info\": {\n   \"name\": \"python\"\n  }\n },\n \"nbformat\": 4,\n \
             \"nbformat_minor\": 5\n}\n"
        );
    }

    #[test]
    fn cells_resolve_by_index_negative_index_id_and_numeric_string() {
        let nb = sample();
        assert_eq!(nb.resolve(&CellRef::Index(0)).unwrap(), 0);
        assert_eq!(nb.resolve(&CellRef::Index(-1)).unwrap(), 2);
        assert_eq!(nb.resolve(&CellRef::Index(-3)).unwrap(), 0);
        assert_eq!(nb.resolve(&CellRef::Id("a1b2c3d4".into())).unwrap(), 1);
        assert_eq!(nb.resolve(&CellRef::Id("2".into())).unwrap(), 2);
        assert_eq!(nb.resolve(&CellRef::Id("-2".into())).unwrap(), 1);

        let e = nb.resolve(&CellRef::Index(3)).unwrap_err().to_string();
        assert_eq!(
            e,
            "cell index 3 is out of range: the notebook has 3 cells, so indexes go from 0 to 2 \
             (or -3 to -1 counting from the end)"
        );
        assert!(nb.resolve(&CellRef::Index(-4)).is_err());
        assert!(nb.resolve(&CellRef::Index(i64::MIN)).is_err());
        let e = nb
            .resolve(&CellRef::Id("nope".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no cell has id \"nope\" (the notebook has 3 cells); cell ids are shown by notebook_read"
        );
        let empty = Notebook::new("k", "K", "python");
        let e = empty.resolve(&CellRef::Index(0)).unwrap_err().to_string();
        assert!(e.ends_with("the notebook has no cells"), "{e}");
    }

    #[test]
    fn cell_refs_deserialize_from_numbers_and_strings() {
        let refs: Vec<CellRef> = serde_json::from_value(json!([3, -1, "abc", "4"])).unwrap();
        assert_eq!(
            refs,
            [
                CellRef::Index(3),
                CellRef::Index(-1),
                CellRef::Id("abc".into()),
                CellRef::Id("4".into())
            ]
        );
    }

    #[test]
    fn inserted_cells_have_the_keys_their_type_needs() {
        let mut nb = Notebook::new("python3", "Python 3", "python");
        let (i, code_id) = nb.insert(None, CellType::Code, "x = 1\nx").unwrap();
        assert_eq!(i, 0);
        assert!(valid_id(&code_id) && code_id.len() == 8);
        let (i, md_id) = nb.insert(Some(0), CellType::Markdown, "# T").unwrap();
        assert_eq!(i, 0);
        assert_ne!(md_id, code_id);
        let e = nb
            .insert(Some(3), CellType::Raw, "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot insert at index 3: the notebook has 2 cells"),
            "{e}"
        );
        let file = file_json(&nb);
        assert_eq!(
            file["cells"],
            json!([
                {"cell_type": "markdown", "id": md_id, "metadata": {}, "source": ["# T"]},
                {"cell_type": "code", "execution_count": null, "id": code_id, "metadata": {},
                 "outputs": [], "source": ["x = 1\n", "x"]}
            ])
        );
    }

    #[test]
    fn editing_clears_outputs_and_type_changes_fix_the_keys() {
        let mut nb = sample();
        nb.edit(1, "print('new')", None).unwrap();
        assert_eq!(nb.source(1).unwrap(), "print('new')");
        assert!(nb.outputs(1).is_empty());
        assert_eq!(nb.execution_count(1), None);
        assert_eq!(file_json(&nb)["cells"][1]["execution_count"], Value::Null);

        nb.edit(1, "now text", Some(CellType::Markdown)).unwrap();
        let cell = &file_json(&nb)["cells"][1];
        assert_eq!(cell["cell_type"], "markdown");
        assert!(cell.get("outputs").is_none() && cell.get("execution_count").is_none());
        assert_eq!(cell["x_unknown"], true);

        nb.edit(0, "code now", Some(CellType::Code)).unwrap();
        let cell = &file_json(&nb)["cells"][0];
        assert_eq!(cell["outputs"], json!([]));
        assert_eq!(cell["execution_count"], Value::Null);
        assert!(cell.get("attachments").is_none(), "{cell}");
        assert_eq!(cell["id"], "intro");
        assert!(nb.edit(7, "", None).is_err());
    }

    #[test]
    fn moving_puts_the_cell_at_the_target_index() {
        let mut nb = sample();
        nb.move_cell(0, 2).unwrap();
        let ids = |nb: &Notebook| {
            (0..nb.len())
                .map(|i| nb.cell_id(i).unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&nb), ["a1b2c3d4", "raw-1", "intro"]);
        nb.move_cell(2, 0).unwrap();
        assert_eq!(ids(&nb), ["intro", "a1b2c3d4", "raw-1"]);
        nb.move_cell(1, 1).unwrap();
        assert_eq!(ids(&nb), ["intro", "a1b2c3d4", "raw-1"]);
        let e = nb.move_cell(0, 3).unwrap_err().to_string();
        assert!(e.contains("cell index 3 is out of range"), "{e}");
    }

    #[test]
    fn deleting_returns_the_id() {
        let mut nb = sample();
        assert_eq!(nb.delete(1).unwrap(), "a1b2c3d4");
        assert_eq!(nb.len(), 2);
        assert_eq!(nb.code_cells(), Vec::<usize>::new());
        assert!(nb.delete(2).is_err());
    }

    #[test]
    fn outputs_are_stored_as_nbformat_and_only_in_code_cells() {
        let mut nb = sample();
        let outputs = vec![
            Output::Stream {
                name: "stdout".into(),
                text: "a\nb\n".into(),
            },
            Output::ExecuteResult {
                execution_count: Some(7),
                data: Map::from_iter([("text/plain".to_string(), json!("7"))]),
                metadata: Map::new(),
            },
        ];
        nb.set_outputs(1, &outputs, Some(7)).unwrap();
        assert_eq!(nb.outputs(1), outputs);
        assert_eq!(nb.execution_count(1), Some(7));
        let cell = &file_json(&nb)["cells"][1];
        assert_eq!(cell["execution_count"], 7);
        assert_eq!(
            cell["outputs"],
            json!([
                {"name": "stdout", "output_type": "stream", "text": ["a\n", "b\n"]},
                {"data": {"text/plain": ["7"]}, "execution_count": 7, "metadata": {},
                 "output_type": "execute_result"}
            ])
        );
        let e = nb.set_outputs(0, &outputs, None).unwrap_err().to_string();
        assert!(
            e.starts_with("cell 0 is a markdown cell, not a code cell"),
            "{e}"
        );
    }

    #[test]
    fn rendering_shows_cells_outputs_and_image_placeholders() {
        let nb = sample();
        let text = nb.render("work/a.ipynb", "0123456789abcdef", false, None, None);
        assert!(
            text.starts_with(
                "notebook work/a.ipynb · 3 cells · kernel python3 · revision 0123456789abcdef\n\n[0] markdown · id intro\n# Title ✓\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "[1] code · id a1b2c3d4 · In [2]\nfor i in (1, 2):\n    print(i)\n1 + 2\n│ 1\n│ 2\n│ [image/png, 8 B]\n│ <Figure>\n│ line two\n│ Out[2]: 3\n│ ValueError: bad \"x\"\n│ Traceback\n│ ValueError: bad\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("[2] raw · id raw-1\n(empty)\n"), "{text}");
        assert!(!text.contains("iVBOR"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert_eq!(nb.render_cell(2), "[2] raw · id raw-1\n(empty)\n");
        assert_eq!(nb.render_cell(3), "no cell 3: the notebook has 3 cells\n");
    }

    #[test]
    fn rendering_a_range_says_which_cells_are_shown() {
        let nb = sample();
        let text = nb.render("a.ipynb", "r", false, Some(1), Some(2));
        assert!(
            text.starts_with(
                "notebook a.ipynb · 3 cells · kernel python3 · revision r · showing cell 1 only\n"
            ),
            "{text}"
        );
        assert!(!text.contains("\n[0] ") && text.contains("\n[1] ") && !text.contains("\n[2] "));
        let text = nb.render("a.ipynb", "r", false, Some(1), Some(99));
        assert!(text.contains("showing cells 1 to 2\n"), "{text}");
        let text = nb.render("a.ipynb", "r", false, Some(5), None);
        assert!(text.contains("showing no cells"), "{text}");
        let text = Notebook::new("k", "K", "python").render("b.ipynb", "r", true, None, None);
        assert_eq!(text, "notebook b.ipynb · 0 cells · kernel k · revision r\n");
    }

    #[test]
    fn compact_rendering_shortens_sources_outputs_and_tracebacks() {
        let mut nb = Notebook::new("python3", "Python 3", "python");
        let source: Vec<String> = (1..=12).map(|i| format!("line{i}")).collect();
        nb.insert(None, CellType::Code, &source.join("\n")).unwrap();
        let long: String = (1..=20).map(|i| format!("out{i}\n")).collect();
        let traceback: Vec<String> = (1..=6)
            .map(|i| format!("\u{1b}[1mframe{i}\u{1b}[0m"))
            .collect();
        let outputs = [
            Output::Stream {
                name: "stdout".into(),
                text: long.clone(),
            },
            Output::Stream {
                name: "stderr".into(),
                text: "x".repeat(1000),
            },
            Output::Error {
                ename: "E".into(),
                evalue: "v".into(),
                traceback,
            },
        ];
        nb.set_outputs(0, &outputs, Some(1)).unwrap();
        let text = nb.render("n.ipynb", "r", true, None, None);
        assert!(text.contains("line8\n… (4 more lines)\n│ out1\n"), "{text}");
        assert!(!text.contains("line9"), "{text}");
        let hidden = long.chars().count() - "out1\nout2\nout3\nout4\nout5\n".len();
        assert!(
            text.contains(&format!("│ out5\n│ … ({hidden} more characters)\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "│ [stderr] {}\n│ … (609 more characters)\n",
                "x".repeat(391)
            )),
            "{text}"
        );
        assert!(
            text.ends_with(
                "│ E: v\n│ … (3 earlier traceback lines)\n│ frame4\n│ frame5\n│ frame6\n"
            ),
            "{text}"
        );
        let full = nb.render("n.ipynb", "r", false, None, None);
        assert!(full.contains("line12\n") && full.contains("out20\n") && full.contains("frame1\n"));
    }

    #[test]
    fn progress_bars_show_their_last_state() {
        assert_eq!(
            settle_carriage_returns("10%\r50%\r100%\ndone\r\n"),
            "100%\ndone\n"
        );
        assert_eq!(settle_carriage_returns("a\nb"), "a\nb");
    }

    #[test]
    fn revision_is_16_hex_digits_of_sha256() {
        assert_eq!(revision(b""), "e3b0c44298fc1c14");
        assert_ne!(revision(b"a"), revision(b"b"));
    }

    #[test]
    fn lines_split_where_python_splits_them() {
        assert_eq!(split_lines(""), Vec::<&str>::new());
        assert_eq!(split_lines("a"), ["a"]);
        assert_eq!(split_lines("a\n"), ["a\n"]);
        assert_eq!(
            split_lines("a\rb\r\nc\u{b}d\u{c}e\u{1c}f\u{85}g\u{2028}h\n\ni"),
            [
                "a\r",
                "b\r\n",
                "c\u{b}",
                "d\u{c}",
                "e\u{1c}",
                "f\u{85}",
                "g\u{2028}",
                "h\n",
                "\n",
                "i"
            ]
        );
    }

    #[test]
    fn floats_are_written_as_python_writes_them() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (123.456, "123.456"),
            (1e100, "1e+100"),
            (2.5e-7, "2.5e-07"),
            (1234567890123456.7, "1234567890123456.8"),
            (-3.25, "-3.25"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for (value, python) in cases {
            assert_eq!(python_float(value), python, "{value:e}");
        }
    }

    #[test]
    fn strings_are_escaped_as_python_escapes_them() {
        let mut out = String::new();
        let text: String = (0u8..0x20)
            .map(char::from)
            .chain("\u{7f}\u{2028}é\"\\".chars())
            .collect();
        write_string(&mut out, &text);
        assert_eq!(
            out,
            "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f\
             \\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\
             \\u001d\\u001e\\u001f\u{7f}\u{2028}é\\\"\\\\\""
        );
    }

    #[test]
    fn image_sizes_are_human_readable() {
        assert_eq!(base64_size("iVBORw0KGgo="), 8);
        assert_eq!(base64_size("QQ==\n"), 1);
        assert_eq!(human_size(1000), "1000 B");
        assert_eq!(human_size(1229), "1.2 KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
    }
}
