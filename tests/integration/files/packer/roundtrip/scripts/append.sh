#!/bin/sh -e
echo "$EXTRA" >> /srv/greeting
