#!/bin/sh
# A shell housekeeping loop.
trap 'exit 0' TERM
echo "cleanup loop started"
while :; do
  sleep 1 &
  wait $!
done
