// A real OpenID provider for Lodge's sign-in tests: npm oidc-provider on Node 22, on 127.0.0.1,
// with its own login form (inputs `login` and `password`), a `groups` claim, PKCE required and a
// refresh token at every code exchange. Test-only: no persistence, fixed cookie keys, plain HTTP.
//
// Run: node oidc_provider.mjs 'CONFIG_JSON'   (or CONFIG_JSON in env OIDC_PROVIDER_CONFIG)
//   { "port": 0,                                     0 = pick a free port
//     "clients": [{ "client_id": "lodge", "client_secret": "s3cret" (omit for a public client),
//                   "redirect_uris": ["http://127.0.0.1:8080/hub/oauth_callback"],
//                   "token_endpoint_auth_method": "client_secret_post" (optional) }],
//     "users": [{ "sub": "u1", "preferred_username": "alice", "email": "alice@example.org",
//                 "password": "pw", "groups": ["staff"] }] }
// When ready it prints one line: `listening on http://127.0.0.1:PORT` (that URL is the issuer).
//
// An authorization request without `scope` is taken as `scope=openid` (oidc-provider itself would
// refuse it). The login form accepts a user's preferred_username, email or sub with its password. Consent is
// granted automatically (every configured client is first-party here), so no consent page
// appears. The `groups` claim rides on the `openid` scope (and a `groups` scope), so it is in the
// ID token and userinfo whatever scopes the relying party asks for.
//
// Test-only admin endpoints (same port, JSON in and out), so a test can act as the provider's admin:
//   POST /test/users/NAME  {"disabled": true} | {"groups": [...]} | any user field
//        NAME is a sub or preferred_username; an unknown NAME creates that user. A disabled user
//        cannot sign in and its refresh fails with invalid_grant; changed groups appear in the
//        next refresh's ID token and in userinfo.
//   POST /test/mint  {"claims": {...}, "header": {"alg"?: "RS256"|"ES256", "kid"?: KID},
//                     "variant"?: "none"|"hs256-public-key"|"unknown-kid"|"alg-key-mismatch",
//                     "hmac_key"?: "pem"|"jwk"}
//        A JWT signed with the provider's own current signing key (published at jwks_uri), or an
//        attack: `none` (alg none, empty signature), `hs256-public-key` (HMAC-SHA256 keyed with
//        the current RSA public key as SPKI PEM, or as its published JWK JSON, alg HS256 and the
//        real kid), `unknown-kid` (a fresh RSA key whose kid is not published),
//        `alg-key-mismatch` (signed ES256 with the EC key, kid naming the RSA key).
//        `iss`, `iat` and `exp` (now + 300 s) are filled in when absent; a claim given as null
//        is left out. Answers {"token", "kid", "alg", "header", "claims"}.
//   POST /test/rotate  a new RSA and EC key pair become current (ID tokens and mint use them);
//        the old keys stay published. Answers {"kids": [...], "current": {"RS256", "ES256"}}.

import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const raw = process.argv[2] ?? process.env.OIDC_PROVIDER_CONFIG;
if (!raw) {
  console.error('usage: oidc_provider.mjs CONFIG_JSON (or env OIDC_PROVIDER_CONFIG)');
  process.exit(2);
}
const config = JSON.parse(raw);
const users = (config.users ?? []).map((u) => ({ groups: [], disabled: false, ...u }));

// Signing keys, newest first: oidc-provider signs with the first key of an algorithm's type, and
// /test/mint does the same, so both agree on which key is current.
const keys = [];
function newKeyPair() {
  const stamp = crypto.randomBytes(6).toString('hex');
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const make = (pair, alg) => ({
    kid: `${alg.toLowerCase()}-${stamp}`,
    alg,
    privateKey: pair.privateKey,
    publicKey: pair.publicKey,
  });
  keys.unshift(make(ec, 'ES256'));
  keys.unshift(make(rsa, 'RS256'));
}
const privateJwk = (k) => ({ ...k.privateKey.export({ format: 'jwk' }), kid: k.kid, alg: k.alg, use: 'sig' });
const publicJwk = (k) => ({ ...k.publicKey.export({ format: 'jwk' }), kid: k.kid, alg: k.alg, use: 'sig' });
const current = (alg) => keys.find((k) => k.alg === alg);

function findUser(name) {
  return users.find((u) => u.sub === name || u.preferred_username === name);
}

async function findAccount(_ctx, sub) {
  const user = users.find((u) => u.sub === sub);
  // An unknown or disabled account makes oidc-provider refuse the refresh with invalid_grant.
  if (!user || user.disabled) return undefined;
  return {
    accountId: user.sub,
    async claims() {
      return {
        sub: user.sub,
        preferred_username: user.preferred_username,
        name: user.name ?? user.preferred_username,
        email: user.email,
        email_verified: user.email !== undefined,
        groups: [...user.groups],
      };
    },
  };
}

// Every test client is first-party: the grant covers whatever was asked, so no consent prompt.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant) {
    grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
  }
  grant.addOIDCScope([...oidc.requestParamScopes].join(' '));
  grant.addOIDCClaims([...oidc.requestParamClaims]);
  await grant.save();
  return grant;
}

const clients = (config.clients ?? []).map((c) => ({
  client_id: c.client_id,
  ...(c.client_secret
    ? { client_secret: c.client_secret, token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic' }
    : { token_endpoint_auth_method: 'none' }),
  redirect_uris: c.redirect_uris,
  post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
}));

// Fixed per process: a restart of the provider object (key rotation) keeps browser sessions.
const cookieKeys = [crypto.randomBytes(32).toString('hex')];

// oidc-provider's own memory adapter keeps a store per provider object; this one is per process,
// so sessions, grants, codes and refresh tokens survive the re-creation a key rotation needs.
const store = new Map();
const grantMembers = new Map();
class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(this.key(id), { payload, expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(this.key(id));
    }
    if (payload.uid) store.set(`uid:${payload.uid}`, { payload: id, expiresAt });
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
  }

  get(key) {
    const entry = store.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return entry.payload;
  }

  async find(id) {
    return this.get(this.key(id));
  }

  async findByUid(uid) {
    const id = this.get(`uid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = this.get(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = this.get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

let issuer;
let provider;
let handler;
function makeProvider() {
  const p = new Provider(issuer, {
    adapter: Adapter,
    clients,
    findAccount,
    loadExistingGrant,
    jwks: { keys: keys.map(privateJwk) },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub', 'groups'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // Claims of the granted scopes go into the ID token too, not only userinfo.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<p id="error">${esc(out.error)}: ${esc(out.error_description ?? '')}</p>`);
    },
  });
  p.on('server_error', (_ctx, err) => console.error('server_error', err));
  provider = p;
  handler = p.callback();
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head>`
    + `<body><h1>${esc(title)}</h1>${body}</body></html>`;
}

function loginForm(uid, error) {
  return page('Test provider sign-in', `${error ? `<p id="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<label>Login <input name="login" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit" id="submit">Sign in</button>
</form>`);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1 << 20) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}
const sendJson = (res, status, value) => send(res, status, 'application/json', JSON.stringify(value));

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'text/html', page('Error', '<p>interaction mismatch</p>'));
  if (details.prompt.name === 'consent') {
    // loadExistingGrant grants everything; reaching here means a request this file did not expect.
    const grant = new provider.Grant({ clientId: details.params.client_id, accountId: details.session.accountId });
    grant.addOIDCScope(details.params.scope ?? 'openid');
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (action === 'login' && req.method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login') ?? '';
    const user = users.find((u) => [u.preferred_username, u.email, u.sub].includes(login));
    if (!user || user.password !== form.get('password')) {
      return send(res, 200, 'text/html', loginForm(uid, 'Wrong login or password.'));
    }
    if (user.disabled) return send(res, 200, 'text/html', loginForm(uid, 'This account is disabled.'));
    return provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
  }
  return send(res, 200, 'text/html', loginForm(uid));
}

function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

function mint({ claims = {}, header = {}, variant, hmac_key: hmacKey = 'pem' } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const payload = { iss: issuer, iat: now, exp: now + 300, ...claims };
  for (const [k, v] of Object.entries(payload)) if (v === null) delete payload[k];
  const alg = header.alg ?? 'RS256';
  const rsa = current('RS256');
  const signingInput = (h) => `${b64url(JSON.stringify(h))}.${b64url(JSON.stringify(payload))}`;
  const sign = (h, key, a) => {
    const input = signingInput(h);
    const opts = a === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key;
    return `${input}.${crypto.sign('sha256', Buffer.from(input), opts).toString('base64url')}`;
  };
  let h;
  let token;
  switch (variant ?? 'valid') {
    case 'valid': {
      const key = header.kid ? keys.find((k) => k.kid === header.kid) : current(alg);
      if (!key) throw new Error(`no published key for kid ${header.kid} / alg ${alg}`);
      if (key.alg !== alg) throw new Error(`key ${key.kid} is ${key.alg}, not ${alg}`);
      h = { typ: 'JWT', ...header, alg, kid: key.kid };
      token = sign(h, key.privateKey, alg);
      break;
    }
    case 'none':
      h = { typ: 'JWT', kid: rsa.kid, ...header, alg: 'none' };
      token = `${signingInput(h)}.`;
      break;
    case 'hs256-public-key': {
      const secret = hmacKey === 'jwk'
        ? JSON.stringify(publicJwk(rsa))
        : rsa.publicKey.export({ type: 'spki', format: 'pem' });
      h = { typ: 'JWT', kid: rsa.kid, ...header, alg: 'HS256' };
      const input = signingInput(h);
      token = `${input}.${crypto.createHmac('sha256', secret).update(input).digest('base64url')}`;
      break;
    }
    case 'unknown-kid': {
      const fresh = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      h = { typ: 'JWT', ...header, alg: 'RS256', kid: `unpublished-${crypto.randomBytes(6).toString('hex')}` };
      token = sign(h, fresh.privateKey, 'RS256');
      break;
    }
    case 'alg-key-mismatch': {
      const ec = current('ES256');
      h = { typ: 'JWT', ...header, alg: 'ES256', kid: rsa.kid };
      token = sign(h, ec.privateKey, 'ES256');
      break;
    }
    default:
      throw new Error(`unknown variant ${variant}`);
  }
  return { token, kid: h.kid, alg: h.alg, header: h, claims: payload };
}

async function admin(req, res, path) {
  if (req.method !== 'POST') return sendJson(res, 405, { error: 'POST only' });
  const text = await readBody(req);
  const body = text ? JSON.parse(text) : {};
  const userMatch = path.match(/^\/test\/users\/([^/]+)$/);
  if (userMatch) {
    const name = decodeURIComponent(userMatch[1]);
    let user = findUser(name);
    if (!user) {
      user = { sub: name, preferred_username: name, groups: [], disabled: false };
      users.push(user);
    }
    Object.assign(user, body);
    const { password: _password, ...shown } = user;
    return sendJson(res, 200, shown);
  }
  if (path === '/test/mint') return sendJson(res, 200, mint(body));
  if (path === '/test/rotate') {
    newKeyPair();
    makeProvider();
    return sendJson(res, 200, {
      kids: keys.map((k) => k.kid),
      current: { RS256: current('RS256').kid, ES256: current('ES256').kid },
    });
  }
  return sendJson(res, 404, { error: `no such test endpoint ${path}` });
}

const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  try {
    if (path.startsWith('/test/')) return await admin(req, res, path);
    const m = path.match(/^\/interaction\/([^/]+)(?:\/(login))?$/);
    if (m) return await interaction(req, res, m[1], m[2]);
    if (path === '/auth' && req.method === 'GET') {
      // oidc-provider grants nothing to a request without scope and answers access_denied; plain
      // OAuth clients (the conformance suite's code-grant scenario) send none: treat it as openid.
      const url = new URL(req.url, 'http://x');
      if (!url.searchParams.has('scope')) {
        url.searchParams.set('scope', 'openid');
        req.url = `${url.pathname}${url.search}`;
      }
    }
    return handler(req, res);
  } catch (err) {
    console.error(`${req.method} ${path}:`, err);
    if (!res.headersSent) sendJson(res, 500, { error: String(err?.message ?? err) });
    else res.end();
  }
});

server.listen(config.port ?? 0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  newKeyPair();
  makeProvider();
  console.log(`listening on ${issuer}`);
});

// The test holds our stdin open; its end means the test is gone: do not outlive it.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
