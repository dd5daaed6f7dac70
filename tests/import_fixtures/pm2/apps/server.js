// An HTTP server as PM2 users write it, changed as docs/migrating.md says: under procsup's
// cluster mode the daemon holds the port and hands it over as fd 3 (LISTEN_FDS).
const http = require("http");
const server = http.createServer((req, res) => {
  res.setHeader("Connection", "close");
  res.end(`hello from ${process.pid}\n`);
});
if (process.env.LISTEN_FDS) {
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT || 3000));
}
process.on("SIGTERM", () => server.close(() => process.exit(0)));
