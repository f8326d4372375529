// A real MCP client doing OAuth, for Lodge's OAuth tests: the TypeScript SDK's Client over
// StreamableHTTPClientTransport with an in-memory OAuthClientProvider. It starts from the hub's
// 401, discovers, registers (dynamic registration, or a client ID metadata document), runs the code
// flow with its own loopback redirect listener, calls a tool, refreshes, and reports. The browser
// step is the test's: this script only prints the authorization URL and waits for the redirect.
//
// Run: node oauth_client.mjs MCP_URL MODE ['OPTIONS_JSON']
//   MODE dcr:  dynamic registration (RFC 7591) with the metadata below.
//   MODE cimd: the client ID is the HTTPS URL of a client ID metadata document this script serves
//              itself (node https) with OPTIONS {"metadata_cert": PEM_PATH, "metadata_key": PEM_PATH}
//              (the certificate must name 127.0.0.1; the hub must trust its CA).
//   OPTIONS also: {"tool": "session_info", "arguments": {}, "scope": "...",
//                  "callback_timeout_ms": 120000}
//   NODE_EXTRA_CA_CERTS makes this process trust a test CA (for a hub served over TLS).
// Output, one line each, in this order:
//   METADATA <url>          (cimd only) the client ID / metadata document URL
//   AUTHORIZE <url>         open this in the browser: sign in and consent; the hub redirects
//                           to http://127.0.0.1:PORT/callback on this script's listener
//   {"step":"authorized","client_id":...,"access_token":...,"refresh_token":...,"scope":...}
//   {"step":"tools","tools":[names]}
//   {"step":"call","result":{...}}
//   {"step":"refreshed","changed":bool,"refresh_rotated":bool,"access_token":...,"refresh_token":...}
//   {"step":"call_after_refresh","result":{...}}
//   {"step":"waiting"}      then reads stdin until a line `again`
//   {"step":"again","ok":bool,"result"?:{...},"error"?:"...","reauthorize":bool}
//                           reauthorize: the SDK wanted a new browser sign-in (refresh refused)
// On any failure: {"step":"error","error":"..."} and exit status 1.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import readline from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { auth, UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [mcpUrlArg, mode, optionsArg] = process.argv.slice(2);
if (!mcpUrlArg || !['dcr', 'cimd'].includes(mode)) {
  console.error('usage: oauth_client.mjs MCP_URL dcr|cimd [OPTIONS_JSON]');
  process.exit(2);
}
const mcpUrl = new URL(mcpUrlArg);
const options = optionsArg ? JSON.parse(optionsArg) : {};
const toolName = options.tool ?? 'session_info';
const toolArgs = options.arguments ?? {};

function emit(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

function fail(error) {
  emit({ step: 'error', error: String(error?.stack ?? error) });
  process.exit(1);
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

// The loopback redirect listener: each /callback resolves the pending wait with its query.
let pendingCallback = null;
const callbackServer = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname !== '/callback') {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<!doctype html><html><body><h1 id="done">Authorization complete</h1></body></html>');
  pendingCallback?.(url.searchParams);
  pendingCallback = null;
});
const callbackPort = await listen(callbackServer);
const redirectUrl = `http://127.0.0.1:${callbackPort}/callback`;

const clientMetadata = {
  client_name: `Lodge OAuth test client (${mode})`,
  redirect_uris: [redirectUrl],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'none',
  ...(options.scope ? { scope: options.scope } : {}),
};

let metadataServer = null;
let clientMetadataUrl;
if (mode === 'cimd') {
  if (!options.metadata_cert || !options.metadata_key) fail('cimd needs metadata_cert and metadata_key');
  metadataServer = https.createServer({
    cert: fs.readFileSync(options.metadata_cert),
    key: fs.readFileSync(options.metadata_key),
  }, (req, res) => {
    if (new URL(req.url, 'https://127.0.0.1').pathname !== '/client.json') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=60' });
    res.end(JSON.stringify({ client_id: clientMetadataUrl, ...clientMetadata }));
  });
  const port = await listen(metadataServer);
  clientMetadataUrl = `https://127.0.0.1:${port}/client.json`;
  process.stdout.write(`METADATA ${clientMetadataUrl}\n`);
}

// Everything the SDK asks an OAuthClientProvider to keep, kept in memory as received.
let interactive = true;
let reauthorizeRequested = false;
let expectedState;
const store = {};
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() { return clientMetadata; },
  ...(clientMetadataUrl ? { clientMetadataUrl } : {}),
  state() {
    expectedState = crypto.randomBytes(16).toString('base64url');
    return expectedState;
  },
  clientInformation() { return store.client; },
  saveClientInformation(info) { store.client = info; },
  tokens() { return store.tokens; },
  saveTokens(tokens) { store.tokens = tokens; },
  saveCodeVerifier(verifier) { store.verifier = verifier; },
  codeVerifier() {
    if (!store.verifier) throw new Error('no code verifier saved');
    return store.verifier;
  },
  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') delete store.client;
    if (scope === 'all' || scope === 'tokens') delete store.tokens;
    if (scope === 'all' || scope === 'verifier') delete store.verifier;
  },
  redirectToAuthorization(url) {
    if (!interactive) {
      // After the sign-in phase a new browser step means the hub refused the refresh.
      reauthorizeRequested = true;
      return;
    }
    process.stdout.write(`AUTHORIZE ${url.href}\n`);
  },
};

function waitForCallback() {
  const timeout = options.callback_timeout_ms ?? 120000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no redirect to ${redirectUrl} within ${timeout} ms`)), timeout);
    pendingCallback = (params) => {
      clearTimeout(timer);
      resolve(params);
    };
  });
}

async function connect() {
  const client = new Client({ name: 'lodge-oauth-test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
  await client.connect(transport);
  return client;
}

async function callTool(client) {
  return client.callTool({ name: toolName, arguments: toolArgs });
}

try {
  let client;
  try {
    client = await connect();
    fail('the hub accepted an unauthenticated client');
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
  }
  const params = await waitForCallback();
  if (params.get('error')) throw new Error(`authorization failed: ${params.get('error')} ${params.get('error_description') ?? ''}`);
  if (params.get('state') !== expectedState) throw new Error(`state mismatch: sent ${expectedState}, got ${params.get('state')}`);
  const code = params.get('code');
  if (!code) throw new Error('redirect without a code');
  // finishAuth exchanges the code through the same discovery; a fresh transport then connects.
  const first = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
  await first.finishAuth(code);
  interactive = false;
  client = await connect();
  emit({
    step: 'authorized',
    client_id: store.client?.client_id,
    access_token: store.tokens?.access_token,
    refresh_token: store.tokens?.refresh_token,
    scope: store.tokens?.scope,
  });

  const { tools } = await client.listTools();
  emit({ step: 'tools', tools: tools.map((t) => t.name) });
  emit({ step: 'call', result: await callTool(client) });

  // The SDK's refresh path: auth() with a stored refresh token refreshes instead of redirecting.
  const before = { ...store.tokens };
  const outcome = await auth(provider, { serverUrl: mcpUrl });
  if (outcome !== 'AUTHORIZED' || reauthorizeRequested) throw new Error(`refresh did not authorize: ${outcome}`);
  emit({
    step: 'refreshed',
    changed: store.tokens.access_token !== before.access_token,
    refresh_rotated: store.tokens.refresh_token !== before.refresh_token,
    access_token: store.tokens.access_token,
    refresh_token: store.tokens.refresh_token,
  });
  emit({ step: 'call_after_refresh', result: await callTool(client) });

  emit({ step: 'waiting' });
  const lines = readline.createInterface({ input: process.stdin });
  let again = false;
  for await (const line of lines) {
    if (line.trim() === 'again') {
      again = true;
      break;
    }
  }
  if (!again) throw new Error('stdin closed before `again`');
  try {
    const result = await callTool(client);
    emit({ step: 'again', ok: !result.isError, result, reauthorize: reauthorizeRequested });
  } catch (e) {
    emit({ step: 'again', ok: false, error: String(e?.message ?? e), reauthorize: reauthorizeRequested });
  }
  await client.close().catch(() => {});
  callbackServer.close();
  metadataServer?.close();
  process.exit(0);
} catch (e) {
  fail(e);
}
