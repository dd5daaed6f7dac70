/**
 * PM2 ecosystem for the shop: an HTTP API in cluster mode and a queue worker.
 * https://pm2.keymetrics.io/docs/usage/application-declaration/
 */
module.exports = {
  apps: [
    {
      name: "shop-api",
      script: "./apps/server.js",
      instances: 2,
      exec_mode: "cluster_mode", // node's cluster module shares the port
      max_memory_restart: "300M",
      env: {
        NODE_ENV: "development",
        PORT: 47813,
      },
      env_production: {
        NODE_ENV: "production",
      },
      kill_timeout: 3000,
      listen_timeout: 8000,
      merge_logs: true,
      log_date_format: "YYYY-MM-DD HH:mm:ss Z",
    },
    {
      name: "queue-worker",
      script: "apps/worker.js",
      node_args: "--max-old-space-size=256",
      args: ["--queue", "default"],
      autorestart: true,
      max_restarts: 10,
      min_uptime: "2s",
      restart_delay: 500,
      exp_backoff_restart_delay: 100,
      cron_restart: "0 3 * * *", // nightly fresh start
      env: { NODE_ENV: "development", CONCURRENCY: 4, VERBOSE: false },
      env_production: { NODE_ENV: "production", CONCURRENCY: 16 },
      /* the old log location, kept for the log shipper */
      out_file: "logs/worker.out.log",
      error_file: "logs/worker.err.log",
    },
  ],
};
