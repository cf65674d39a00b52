//go:build tools

// Package tools pins kwok so `go mod tidy` keeps what its command needs.
package tools

import _ "sigs.k8s.io/kwok/pkg/kwok/cmd"
