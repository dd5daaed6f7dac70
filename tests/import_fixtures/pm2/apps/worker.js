// A background worker: reports now and then until it is stopped.
const timer = setInterval(() => {
  console.log(`worker ${process.env.PROCSUP_INSTANCE || 0} alive (${process.env.NODE_ENV})`);
}, 5000);
console.log("worker started");
process.on("SIGTERM", () => {
  clearInterval(timer);
  process.exit(0);
});
