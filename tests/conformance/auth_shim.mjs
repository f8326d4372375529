// A reverse proxy that adds `Authorization: Bearer TOKEN` to every request and passes everything
// else through unchanged, both ways, streaming: the conformance suite has no option for a header,
// and the hub wants a token. Bodies are piped chunk by chunk (an SSE response reaches the suite
// event by event, never buffered); the upstream's status and headers are copied as they are.
//
// Usage: node auth_shim.mjs TARGET_ORIGIN   (token in $LODGE_SHIM_TOKEN)
// Prints "listening on http://127.0.0.1:PORT" on stdout once ready; runs until killed.
import http from 'node:http';

const target = new URL(process.argv[2] ?? '');
const token = process.env.LODGE_SHIM_TOKEN;
if (!token) {
  console.error('auth_shim: set LODGE_SHIM_TOKEN');
  process.exit(2);
}

// One keep-alive pool towards the hub, so the shim adds no handshake per request.
const agent = new http.Agent({ keepAlive: true });

// The shim's own origin stands for the hub's: a request sent to the shim as itself (Host, and a
// browser's Origin) is passed on as sent to the hub itself, as a reverse proxy that keeps the
// public origin would; any other Host or Origin (a DNS-rebinding attempt) is passed on unchanged.
const ownHosts = () => {
  const port = server.address().port;
  return [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`];
};

const server = http.createServer((req, res) => {
  const own = ownHosts().includes(req.headers.host ?? '');
  const headers = { ...req.headers, authorization: `Bearer ${token}` };
  if (own) {
    headers.host = target.host;
    if (headers.origin === `http://${req.headers.host}`) headers.origin = target.origin;
  }
  const upstream = http.request(
    {
      protocol: target.protocol,
      hostname: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers,
      agent
    },
    (up) => {
      res.writeHead(up.statusCode ?? 502, up.statusMessage, up.rawHeaders);
      // Headers go out now, before any body: an SSE stream may stay quiet for a while.
      res.flushHeaders();
      up.pipe(res);
      up.on('error', () => res.destroy());
    }
  );
  upstream.on('error', (e) => {
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`auth_shim: ${e.message}\n`);
    } else {
      res.destroy();
    }
  });
  // The client going away early (a closed SSE stream) ends the upstream request too.
  res.on('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
});

// No timeouts of our own: long SSE streams are the point.
server.requestTimeout = 0;
server.headersTimeout = 0;
server.keepAliveTimeout = 5000;
server.listen(0, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
