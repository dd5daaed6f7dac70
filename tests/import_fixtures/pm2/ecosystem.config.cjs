'use strict';

// CommonJS ecosystem (the package is "type": "module"), paths from __dirname.
module.exports = {
  apps: [
    {
      name: 'jobs',
      script: __dirname + '/apps/idle.py',
      interpreter: 'python3',
      interpreter_args: '-u',
      cwd: __dirname,
      instances: 2,
      exec_mode: 'fork',
      time: true,
      wait_ready: true,
      namespace: 'backend',
      env: {
        PYTHONUNBUFFERED: '1',
      },
    },
    {
      name: 'cleanup',
      script: './apps/cleanup.sh',
      autorestart: true,
      stop_exit_codes: [0],
      cron_restart: '0 0 4 * * *',
      watch: false,
      kill_timeout: 1600,
    },
  ],
};
