//go:build tools

// Package tools pins the OPA command line, whose `opa build -t wasm` compiles Fluxbee's Rego
// policies to WebAssembly, so `go mod tidy` keeps what that command needs.
package tools

import _ "github.com/open-policy-agent/opa/cmd"
