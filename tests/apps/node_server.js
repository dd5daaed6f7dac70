// Test app: a Node HTTP server on the socket-activated fd 3, answering its pid; READY=1 is not
// sent (Node has no sd_notify built in), so it is used with ready = "started".
const http = require("http");
if (process.env.LISTEN_PID !== String(process.pid) || process.env.LISTEN_FDS !== "1") {
  console.error(`bad activation: ${process.env.LISTEN_PID} ${process.env.LISTEN_FDS}`);
  process.exit(3);
}
const server = http.createServer((req, res) => {
  res.setHeader("Connection", "close");
  res.end(String(process.pid));
});
server.listen({ fd: 3 });
process.on("SIGTERM", () => server.close(() => process.exit(0)));
