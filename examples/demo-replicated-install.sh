#!/bin/bash
# Stand-in for the Replicated installer in `make demo` (the real one is downloaded from
# get.replicated.com or kept in the bucket, pinned by sha256). It only shows what it was given.
echo "demo installer: would install Replicated with: $*"
