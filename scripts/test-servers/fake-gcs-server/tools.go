//go:build tools

// Package tools pins github.com/fsouza/fake-gcs-server so that
// `go build github.com/fsouza/fake-gcs-server` builds the emulator binary
// from the versions recorded in go.mod/go.sum.
package tools

import _ "github.com/fsouza/fake-gcs-server"
