//! What a cell's execution produced, as nbformat 4 outputs (`Output` serializes exactly as the
//! file stores it), collected from IOPub messages under a size cap, and turned into plain text
//! and image parts for MCP. It must not drop outputs silently: a cap leaves a note.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// One nbformat output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "output_type", rename_all = "snake_case")]
pub enum Output {
    Stream {
        name: String,
        #[serde(deserialize_with = "multiline")]
        text: String,
    },
    DisplayData {
        data: Map<String, Value>,
        #[serde(default)]
        metadata: Map<String, Value>,
    },
    ExecuteResult {
        execution_count: Option<i64>,
        data: Map<String, Value>,
        #[serde(default)]
        metadata: Map<String, Value>,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
}

/// nbformat allows a multi-line string to be stored as a list of lines.
fn multiline<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        One(String),
        Lines(Vec<String>),
    }
    Ok(match Text::deserialize(deserializer)? {
        Text::One(text) => text,
        Text::Lines(lines) => lines.concat(),
    })
}

/// A MIME value as one string (nbformat may store text as a list of lines).
pub fn mime_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(lines) => Some(lines.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

impl Output {
    /// An output read from a notebook file; `None` for anything that is not a valid output.
    pub fn from_json(value: &Value) -> Option<Output> {
        serde_json::from_value(value.clone()).ok()
    }

    /// Bytes it costs against an output cap.
    fn size(&self) -> usize {
        match self {
            Output::Stream { text, .. } => text.len(),
            Output::DisplayData { data, .. } | Output::ExecuteResult { data, .. } => data
                .values()
                .map(|v| mime_text(v).map_or(0, |t| t.len()))
                .sum(),
            Output::Error {
                ename,
                evalue,
                traceback,
            } => ename.len() + evalue.len() + traceback.iter().map(String::len).sum::<usize>(),
        }
    }
}

/// Gathers the outputs of one execution from IOPub messages: consecutive stream text of one
/// stream is merged (as Jupyter front ends do), `clear_output` is honoured, and everything
/// beyond `cap` bytes is dropped and counted.
#[derive(Debug)]
pub struct Collector {
    outputs: Vec<Output>,
    cap: usize,
    used: usize,
    dropped: usize,
    /// A `clear_output(wait=True)` waiting for the next output.
    clear_pending: bool,
    /// From `execute_input`/`execute_result`.
    pub execution_count: Option<i64>,
}

impl Collector {
    pub fn new(cap: usize) -> Collector {
        Collector {
            outputs: Vec::new(),
            cap,
            used: 0,
            dropped: 0,
            clear_pending: false,
            execution_count: None,
        }
    }

    /// Takes one IOPub message (its type and content); messages that carry no output are
    /// ignored.
    pub fn push(&mut self, msg_type: &str, content: &Value) {
        let field = |name: &str| content.get(name).cloned().unwrap_or(Value::Null);
        let object = |name: &str| match field(name) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let output = match msg_type {
            "execute_input" => {
                self.execution_count = content.get("execution_count").and_then(Value::as_i64);
                return;
            }
            "clear_output" => {
                if field("wait").as_bool() == Some(true) {
                    self.clear_pending = true;
                } else {
                    self.clear();
                }
                return;
            }
            "stream" => Output::Stream {
                name: field("name").as_str().unwrap_or("stdout").to_string(),
                text: field("text").as_str().unwrap_or_default().to_string(),
            },
            "display_data" => Output::DisplayData {
                data: object("data"),
                metadata: object("metadata"),
            },
            "execute_result" => {
                let count = content.get("execution_count").and_then(Value::as_i64);
                self.execution_count = count.or(self.execution_count);
                Output::ExecuteResult {
                    execution_count: count,
                    data: object("data"),
                    metadata: object("metadata"),
                }
            }
            "error" => Output::Error {
                ename: field("ename").as_str().unwrap_or_default().to_string(),
                evalue: field("evalue").as_str().unwrap_or_default().to_string(),
                traceback: match field("traceback") {
                    Value::Array(lines) => lines
                        .iter()
                        .filter_map(|l| l.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                },
            },
            _ => return,
        };
        if std::mem::take(&mut self.clear_pending) {
            self.clear();
        }
        self.add(output);
    }

    fn clear(&mut self) {
        self.outputs.clear();
        self.used = 0;
    }

    fn add(&mut self, output: Output) {
        let room = self.cap.saturating_sub(self.used);
        // Stream text continues the previous output of the same stream, and may be cut.
        if let Output::Stream { name, text } = &output {
            let kept = &text[..floor_char_boundary(text, room)];
            self.dropped += text.len() - kept.len();
            self.used += kept.len();
            if kept.is_empty() {
                return;
            }
            if let Some(Output::Stream {
                name: last,
                text: so_far,
            }) = self.outputs.last_mut()
                && last == name
            {
                so_far.push_str(kept);
                return;
            }
            self.outputs.push(Output::Stream {
                name: name.clone(),
                text: kept.to_string(),
            });
            return;
        }
        let size = output.size();
        if size > room {
            self.dropped += size;
            return;
        }
        self.used += size;
        self.outputs.push(output);
    }

    /// The outputs, and whether any were dropped (a final stderr note then says how much).
    pub fn finish(mut self) -> (Vec<Output>, bool) {
        let truncated = self.dropped > 0;
        if truncated {
            self.outputs.push(Output::Stream {
                name: "stderr".to_string(),
                text: format!(
                    "\n[lodge: {} bytes of output dropped: the output cap is {} bytes]\n",
                    self.dropped, self.cap
                ),
            });
        }
        (self.outputs, truncated)
    }
}

/// The largest index `<= at` that is a char boundary of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// A piece of MCP content made from outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// Base64 data, as nbformat stores it.
    Image {
        mime: String,
        data: String,
    },
}

/// Image types returned as MCP image content; other types are shown as text.
const IMAGE_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/gif"];
/// Text types tried, in order, when a bundle has no image.
const TEXT_TYPES: [&str; 5] = [
    "text/plain",
    "text/markdown",
    "text/latex",
    "image/svg+xml",
    "text/html",
];

/// Outputs as MCP content: stream text as is, one text or image per display bundle (an image
/// when the bundle has one, else its best text form), errors as name, value and a traceback
/// with ANSI codes stripped. Adjacent texts are joined into one part.
pub fn to_parts(outputs: &[Output]) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    let push_text = |parts: &mut Vec<Part>, text: String| {
        if text.is_empty() {
            return;
        }
        if let Some(Part::Text(last)) = parts.last_mut() {
            if !last.ends_with('\n') {
                last.push('\n');
            }
            last.push_str(&text);
        } else {
            parts.push(Part::Text(text));
        }
    };
    for output in outputs {
        match output {
            Output::Stream { text, .. } => push_text(&mut parts, strip_ansi(text)),
            Output::DisplayData { data, .. } | Output::ExecuteResult { data, .. } => {
                let prefix = match output {
                    Output::ExecuteResult {
                        execution_count: Some(n),
                        ..
                    } => format!("Out[{n}]: "),
                    _ => String::new(),
                };
                if let Some((mime, data)) = IMAGE_TYPES
                    .iter()
                    .find_map(|mime| Some((*mime, mime_text(data.get(*mime)?)?)))
                {
                    parts.push(Part::Image {
                        mime: mime.to_string(),
                        data: data.split_whitespace().collect(),
                    });
                } else if let Some(text) = TEXT_TYPES
                    .iter()
                    .find_map(|mime| mime_text(data.get(*mime)?))
                {
                    push_text(&mut parts, format!("{prefix}{}", strip_ansi(&text)));
                } else {
                    let kinds: Vec<&str> = data.keys().map(String::as_str).collect();
                    push_text(&mut parts, format!("[output of type {}]", kinds.join(", ")));
                }
            }
            Output::Error {
                ename,
                evalue,
                traceback,
            } => {
                let mut text = format!("{ename}: {evalue}");
                if !traceback.is_empty() {
                    text.push('\n');
                    text.push_str(&strip_ansi(&traceback.join("\n")));
                }
                push_text(&mut parts, text);
            }
        }
    }
    parts
}

/// `text` without ANSI escape sequences (colours in tracebacks, cursor moves in progress bars).
pub fn strip_ansi(text: &str) -> String {
    lodge_core::text::without_ansi(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ansi_codes_are_stripped_and_text_kept() {
        let tb = "\u{1b}[31m---\u{1b}[39m\n\u{1b}[1;32mZeroDivisionError\u{1b}[0m: x \u{1b}]0;title\u{7}é";
        assert_eq!(strip_ansi(tb), "---\nZeroDivisionError: x é");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn streams_merge_and_serialize_as_nbformat() {
        let mut c = Collector::new(1000);
        c.push("execute_input", &json!({"execution_count": 3, "code": "x"}));
        c.push("stream", &json!({"name": "stdout", "text": "a\n"}));
        c.push("stream", &json!({"name": "stdout", "text": "b\n"}));
        c.push("stream", &json!({"name": "stderr", "text": "e\n"}));
        c.push("execute_result", &json!({"execution_count": 3, "data": {"text/plain": "2"}, "metadata": {}, "transient": null}));
        assert_eq!(c.execution_count, Some(3));
        let (outputs, truncated) = c.finish();
        assert!(!truncated);
        assert_eq!(
            serde_json::to_value(&outputs).unwrap(),
            json!([
                {"output_type": "stream", "name": "stdout", "text": "a\nb\n"},
                {"output_type": "stream", "name": "stderr", "text": "e\n"},
                {"output_type": "execute_result", "execution_count": 3, "data": {"text/plain": "2"}, "metadata": {}}
            ])
        );
    }

    #[test]
    fn clear_output_waits_for_the_next_output() {
        let mut c = Collector::new(1000);
        c.push("stream", &json!({"name": "stdout", "text": "10%"}));
        c.push("clear_output", &json!({"wait": true}));
        assert_eq!(c.outputs.len(), 1);
        c.push("stream", &json!({"name": "stdout", "text": "100%"}));
        let (outputs, _) = c.finish();
        assert_eq!(
            outputs,
            vec![Output::Stream {
                name: "stdout".into(),
                text: "100%".into()
            }]
        );
    }

    #[test]
    fn the_cap_cuts_streams_on_char_boundaries_and_leaves_a_note() {
        let mut c = Collector::new(5);
        c.push("stream", &json!({"name": "stdout", "text": "abcdé€"}));
        c.push(
            "display_data",
            &json!({"data": {"text/plain": "big"}, "metadata": {}}),
        );
        let (outputs, truncated) = c.finish();
        assert!(truncated);
        assert_eq!(
            outputs[0],
            Output::Stream {
                name: "stdout".into(),
                text: "abcd".into()
            }
        );
        let Output::Stream { text, name } = &outputs[1] else {
            panic!("{outputs:?}")
        };
        assert_eq!(name, "stderr");
        assert!(text.contains("8 bytes of output dropped"), "{text}");
    }

    #[test]
    fn parts_carry_images_text_and_stripped_tracebacks() {
        let outputs = vec![
            Output::Stream {
                name: "stdout".into(),
                text: "hi\n".into(),
            },
            Output::DisplayData {
                data: Map::from_iter([
                    ("image/png".to_string(), json!("iVBO\nRw==\n")),
                    ("text/plain".to_string(), json!("<Image>")),
                ]),
                metadata: Map::new(),
            },
            Output::ExecuteResult {
                execution_count: Some(2),
                data: Map::from_iter([("text/plain".to_string(), json!(["1", "0"]))]),
                metadata: Map::new(),
            },
            Output::Error {
                ename: "ValueError".into(),
                evalue: "bad".into(),
                traceback: vec!["\u{1b}[31mTraceback\u{1b}[0m".into(), "line".into()],
            },
        ];
        assert_eq!(
            to_parts(&outputs),
            vec![
                Part::Text("hi\n".into()),
                Part::Image {
                    mime: "image/png".into(),
                    data: "iVBORw==".into()
                },
                Part::Text("Out[2]: 10\nValueError: bad\nTraceback\nline".into()),
            ]
        );
    }

    #[test]
    fn outputs_stored_as_line_lists_are_read() {
        let value = json!({"output_type": "stream", "name": "stdout", "text": ["a\n", "b"]});
        assert_eq!(
            Output::from_json(&value),
            Some(Output::Stream {
                name: "stdout".into(),
                text: "a\nb".into()
            })
        );
        assert_eq!(Output::from_json(&json!({"output_type": "nope"})), None);
    }
}
