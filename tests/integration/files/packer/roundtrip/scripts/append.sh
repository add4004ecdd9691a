#!/bin/sh
set -e
echo "$EXTRA" >> /srv/greeting
