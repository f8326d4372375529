//! Kernelspecs found on disk (`kernels/<name>/kernel.json` under Jupyter data directories), the
//! choice of one for a notebook, and the command line that would start it. It reads files but
//! must not start anything: the agent launches kernels.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a kernel is interrupted: a SIGINT to its process, or an `interrupt_request` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterruptMode {
    #[default]
    Signal,
    Message,
}

/// One kernelspec: what `kernel.json` says, named after its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub display_name: String,
    pub language: String,
    pub interrupt_mode: InterruptMode,
    pub env: BTreeMap<String, String>,
    /// The directory holding `kernel.json` (Jupyter's `resource_dir`).
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read kernelspec {}: {source}; fix its permissions or remove it", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("kernelspec {} is invalid: {reason}; fix the file or remove its directory", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "no kernelspec named {name:?}; this room has: {available}. Name one of those, or add \
         {USER_SPECS}/{name}/kernel.json in your workspace, or ask the hub's operator to add a \
         Jupyter dir holding it to [kernels] paths"
    )]
    NoSuchSpec { name: String, available: String },
    #[error("this room has no Jupyter kernelspecs. {}", no_specs_hint(*.room_network))]
    NoSpecs {
        /// The room reaches the network (so the user can install ipykernel themselves).
        room_network: bool,
    },
}

/// Where a room's own kernelspecs go (`ipykernel install --user` with HOME = /workspace).
pub const USER_SPECS: &str = "/workspace/.local/share/jupyter/kernels";

/// What to do about a room without kernelspecs, true for that room: pip cannot reach PyPI
/// without network, and Debian's pip refuses the system Python (PEP 668) anyway, so only a
/// room with network can make its own venv; otherwise the operator installs Debian's
/// python3-ipykernel on the host (its kernelspec is in /usr/share/jupyter, which rooms see).
fn no_specs_hint(room_network: bool) -> String {
    let operator = "ask the hub's operator to install Debian's python3-ipykernel on the host \
         (`apt-get install python3-ipykernel`; `lodge doctor` checks it)";
    if room_network {
        format!(
            "Make one in your workspace: `python3 -m venv ~/.venv && ~/.venv/bin/pip install \
             ipykernel && ~/.venv/bin/python -m ipykernel install --user` (the kernelspec goes \
             to {USER_SPECS}), or {operator}"
        )
    } else {
        format!(
            "This room has no network, so ipykernel cannot be installed from inside it: \
             {operator}. If your workspace already holds a Python environment with ipykernel \
             (made where there was network), register it with \
             `PATH_TO_ITS_PYTHON -m ipykernel install --user`"
        )
    }
}

/// `kernel.json` as Jupyter documents it; other keys (metadata, protocol version) are unused.
#[derive(Deserialize)]
struct KernelJson {
    argv: Vec<String>,
    display_name: String,
    #[serde(default)]
    language: String,
    #[serde(default)]
    interrupt_mode: InterruptMode,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

impl KernelSpec {
    /// Reads `dir/kernel.json`; the spec is named after `dir`.
    pub fn load(dir: &Path) -> Result<KernelSpec, SpecError> {
        let path = dir.join("kernel.json");
        let invalid = |reason: String| SpecError::Invalid {
            path: path.clone(),
            reason,
        };
        let name = dir
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| invalid("its directory name is not UTF-8".to_string()))?
            .to_string();
        let bytes = fs::read(&path).map_err(|source| SpecError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let json: KernelJson =
            serde_json::from_slice(&bytes).map_err(|err| invalid(err.to_string()))?;
        if json.argv.is_empty() {
            return Err(invalid("its argv is empty".to_string()));
        }
        Ok(KernelSpec {
            name,
            argv: json.argv,
            display_name: json.display_name,
            language: json.language,
            interrupt_mode: json.interrupt_mode,
            env: json.env,
            dir: dir.to_path_buf(),
        })
    }

    /// The command line that starts this kernel with `connection_file`. A bare program name
    /// such as PyPI ipykernel's `python` means the Python of the environment the spec was
    /// installed into (jupyter_client substitutes its own interpreter), so when the spec lives
    /// in `<prefix>/share/jupyter/kernels/<name>` and `<prefix>/bin/<program>` exists, that is
    /// used; otherwise the name is left for a PATH lookup.
    pub fn launch_argv(&self, connection_file: &Path) -> Vec<String> {
        let connection_file = connection_file.to_string_lossy();
        let resource_dir = self.dir.to_string_lossy();
        let mut argv: Vec<String> = self
            .argv
            .iter()
            .map(|arg| {
                arg.replace("{connection_file}", &connection_file)
                    .replace("{resource_dir}", &resource_dir)
            })
            .collect();
        if let Some(program) = argv.first_mut()
            && let Some(path) = self.prefix_program(program)
        {
            *program = path;
        }
        argv
    }

    /// `<prefix>/bin/<program>` for a bare program name, when the spec is installed in a
    /// prefix that has it.
    fn prefix_program(&self, program: &str) -> Option<String> {
        if program.is_empty() || program.contains('/') {
            return None;
        }
        let candidate = install_prefix(&self.dir)?.join("bin").join(program);
        candidate
            .is_file()
            .then(|| candidate.to_string_lossy().into_owned())
    }
}

/// `<prefix>` of a spec directory `<prefix>/share/jupyter/kernels/<name>`.
fn install_prefix(dir: &Path) -> Option<&Path> {
    let kernels = dir.parent()?;
    let jupyter = kernels.parent()?;
    let share = jupyter.parent()?;
    let named = |path: &Path, name: &str| path.file_name().is_some_and(|n| n == name);
    if named(kernels, "kernels") && named(jupyter, "jupyter") && named(share, "share") {
        share.parent()
    } else {
        None
    }
}

/// Kernelspecs under `<data dir>/kernels/` for each data dir, in order. A name found in an
/// earlier dir hides the same name in later ones, as in Jupyter; a spec that cannot be read is
/// skipped with a warning (so a later dir's spec of that name is used instead), and a missing
/// dir is fine.
pub fn find_specs(data_dirs: &[PathBuf]) -> Vec<KernelSpec> {
    let mut specs = Vec::new();
    let mut seen = BTreeSet::new();
    for data_dir in data_dirs {
        for dir in spec_dirs(&data_dir.join("kernels")) {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
                tracing::warn!(
                    "skipping kernelspec {}: its name is not UTF-8",
                    dir.display()
                );
                continue;
            };
            if seen.contains(name) {
                continue;
            }
            match KernelSpec::load(&dir) {
                Ok(spec) => {
                    seen.insert(spec.name.clone());
                    specs.push(spec);
                }
                Err(err) => tracing::warn!("skipping a kernelspec: {err}"),
            }
        }
    }
    specs
}

/// Directories in `kernels` that hold a `kernel.json`, sorted by name.
fn spec_dirs(kernels: &Path) -> Vec<PathBuf> {
    let entries = match fs::read_dir(kernels) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => {
            tracing::warn!("skipping kernelspecs in {}: {err}", kernels.display());
            return Vec::new();
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("kernel.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The spec to use: `wanted` if given, else `default`, else the first Python spec, else the
/// first. Names match exactly, else ignoring case: Jupyter lowercases spec names, so a
/// notebook written elsewhere may name `Julia-1.10` as `julia-1.10`.
/// `room_network` says whether the room reaches the network, for the hint when it has none.
pub fn choose<'a>(
    specs: &'a [KernelSpec],
    wanted: Option<&str>,
    default: &str,
    room_network: bool,
) -> Result<&'a KernelSpec, SpecError> {
    let none = SpecError::NoSpecs { room_network };
    if specs.is_empty() {
        return Err(none);
    }
    if let Some(name) = wanted {
        return by_name(specs, name).ok_or_else(|| SpecError::NoSuchSpec {
            name: name.to_string(),
            available: specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    by_name(specs, default)
        .or_else(|| {
            specs
                .iter()
                .find(|s| s.language.eq_ignore_ascii_case("python"))
        })
        .or(specs.first())
        .ok_or(none)
}

fn by_name<'a>(specs: &'a [KernelSpec], name: &str) -> Option<&'a KernelSpec> {
    specs
        .iter()
        .find(|s| s.name == name)
        .or_else(|| specs.iter().find(|s| s.name.eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_spec(data_dir: &Path, name: &str, json: &serde_json::Value) -> PathBuf {
        let dir = data_dir.join("kernels").join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("kernel.json"), json.to_string()).unwrap();
        dir
    }

    fn spec_json(display_name: &str, language: &str) -> serde_json::Value {
        json!({
            "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": display_name,
            "language": language,
            "metadata": {"debugger": true},
            "kernel_protocol_version": "5.5"
        })
    }

    fn spec(name: &str, language: &str) -> KernelSpec {
        KernelSpec {
            name: name.to_string(),
            argv: vec!["x".to_string()],
            display_name: name.to_string(),
            language: language.to_string(),
            interrupt_mode: InterruptMode::Signal,
            env: BTreeMap::new(),
            dir: PathBuf::from("/nowhere"),
        }
    }

    #[test]
    fn the_first_dir_with_a_name_wins_and_names_are_sorted() {
        let user = tempfile::tempdir().unwrap();
        let system = tempfile::tempdir().unwrap();
        write_spec(user.path(), "python3", &spec_json("User Python", "python"));
        write_spec(
            system.path(),
            "python3",
            &spec_json("System Python", "python"),
        );
        write_spec(system.path(), "ir", &spec_json("R", "R"));
        let missing = user.path().join("does-not-exist");
        let specs = find_specs(&[missing, user.path().into(), system.path().into()]);
        let names: Vec<(&str, &str)> = specs
            .iter()
            .map(|s| (s.name.as_str(), s.display_name.as_str()))
            .collect();
        assert_eq!(names, [("python3", "User Python"), ("ir", "R")]);
        assert_eq!(specs[0].dir, user.path().join("kernels/python3"));
        assert_eq!(specs[0].interrupt_mode, InterruptMode::Signal);
    }

    #[test]
    fn invalid_specs_are_skipped_and_a_later_dir_fills_in() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let broken = first.path().join("kernels/python3");
        fs::create_dir_all(&broken).unwrap();
        fs::write(broken.join("kernel.json"), "{ not json").unwrap();
        write_spec(
            first.path(),
            "empty",
            &json!({"argv": [], "display_name": "E"}),
        );
        write_spec(first.path(), "nameless", &json!({"argv": ["x"]}));
        // A directory without kernel.json is not a kernelspec at all.
        fs::create_dir_all(first.path().join("kernels/stray")).unwrap();
        write_spec(second.path(), "python3", &spec_json("Python", "python"));
        let specs = find_specs(&[first.path().into(), second.path().into()]);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["python3"]);
        assert_eq!(specs[0].display_name, "Python");

        let err = KernelSpec::load(&broken).unwrap_err().to_string();
        assert!(err.contains("python3/kernel.json is invalid"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn optional_fields_are_read() {
        let data = tempfile::tempdir().unwrap();
        let dir = write_spec(
            data.path(),
            "custom",
            &json!({
                "argv": ["/usr/bin/kernel", "{connection_file}"],
                "display_name": "Custom",
                "language": "lisp",
                "interrupt_mode": "message",
                "env": {"A": "1"}
            }),
        );
        let spec = KernelSpec::load(&dir).unwrap();
        assert_eq!(spec.interrupt_mode, InterruptMode::Message);
        assert_eq!(
            spec.env,
            BTreeMap::from([("A".to_string(), "1".to_string())])
        );
        assert_eq!(spec.language, "lisp");
    }

    #[test]
    fn a_bare_python_is_the_prefix_python_when_it_exists() {
        let prefix = tempfile::tempdir().unwrap();
        let data_dir = prefix.path().join("share/jupyter");
        let dir = write_spec(&data_dir, "python3", &spec_json("Python 3", "python"));
        let spec = KernelSpec::load(&dir).unwrap();
        let connection = Path::new("/run/lodge/kernel-1.json");

        // No <prefix>/bin/python yet: left for a PATH lookup.
        let argv = spec.launch_argv(connection);
        assert_eq!(
            argv,
            [
                "python",
                "-m",
                "ipykernel_launcher",
                "-f",
                "/run/lodge/kernel-1.json"
            ]
        );

        fs::create_dir_all(prefix.path().join("bin")).unwrap();
        fs::write(prefix.path().join("bin/python"), "").unwrap();
        let argv = spec.launch_argv(connection);
        let python = prefix.path().join("bin/python");
        assert_eq!(argv[0], python.to_string_lossy());
        assert_eq!(argv[4], "/run/lodge/kernel-1.json");
    }

    #[test]
    fn placeholders_are_replaced_in_every_argument_and_paths_are_kept() {
        let data = tempfile::tempdir().unwrap();
        let dir = write_spec(
            data.path(),
            "k",
            &json!({
                "argv": ["/opt/k/bin/k", "--conn={connection_file}", "{resource_dir}/x", "{connection_file}"],
                "display_name": "K"
            }),
        );
        let spec = KernelSpec::load(&dir).unwrap();
        let argv = spec.launch_argv(Path::new("/tmp/c.json"));
        assert_eq!(argv[0], "/opt/k/bin/k");
        assert_eq!(argv[1], "--conn=/tmp/c.json");
        assert_eq!(argv[2], format!("{}/x", dir.display()));
        assert_eq!(argv[3], "/tmp/c.json");
    }

    #[test]
    fn install_prefix_needs_the_share_jupyter_kernels_layout() {
        assert_eq!(
            install_prefix(Path::new("/opt/venv/share/jupyter/kernels/python3")),
            Some(Path::new("/opt/venv"))
        );
        assert_eq!(
            install_prefix(Path::new("/etc/jupyter/kernels/python3")),
            None
        );
        assert_eq!(install_prefix(Path::new("/kernels/python3")), None);
    }

    #[test]
    fn choose_prefers_wanted_then_default_then_python_then_first() {
        let specs = [
            spec("ir", "R"),
            spec("python3", "python"),
            spec("julia", "julia"),
        ];
        let pick = |wanted, default| choose(&specs, wanted, default, false).unwrap().name.clone();
        assert_eq!(pick(Some("julia"), "ir"), "julia");
        assert_eq!(pick(Some("IR"), "ir"), "ir");
        assert_eq!(pick(None, "julia"), "julia");
        assert_eq!(pick(None, "missing"), "python3");
        assert_eq!(choose(&specs[2..], None, "", false).unwrap().name, "julia");
    }

    #[test]
    fn choose_errors_name_what_was_asked_and_what_there_is() {
        let specs = [spec("ir", "R"), spec("python3", "python")];
        for room_network in [false, true] {
            let err = choose(&specs, Some("rust"), "python3", room_network)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("no kernelspec named \"rust\"; this room has: ir, python3."),
                "{err}"
            );
            // Writing a file needs no network: true in every room.
            assert!(
                err.contains("/workspace/.local/share/jupyter/kernels/rust/kernel.json"),
                "{err}"
            );
            assert!(!err.contains("pip"), "{err}");
        }
    }

    /// Issue 12 finding 15: the hint for a room without kernelspecs is one that can work in
    /// that room. Without network, pip cannot: the operator's Debian package is the way.
    #[test]
    fn the_no_kernelspec_hint_fits_the_room() {
        let offline = choose(&[], Some("python3"), "python3", false)
            .unwrap_err()
            .to_string();
        assert!(
            offline.starts_with("this room has no Jupyter kernelspecs."),
            "{offline}"
        );
        assert!(offline.contains("no network"), "{offline}");
        assert!(
            offline.contains("apt-get install python3-ipykernel"),
            "{offline}"
        );
        assert!(offline.contains("lodge doctor"), "{offline}");
        assert!(!offline.contains("pip install"), "{offline}");

        let online = choose(&[], None, "python3", true).unwrap_err().to_string();
        // pip into a venv of the user's own (Debian's pip refuses the system Python).
        assert!(
            online.contains("python3 -m venv ~/.venv && ~/.venv/bin/pip install ipykernel"),
            "{online}"
        );
        assert!(online.contains("ipykernel install --user"), "{online}");
        assert!(online.contains("python3-ipykernel"), "{online}");
        assert!(!online.contains("no network"), "{online}");
    }
}
