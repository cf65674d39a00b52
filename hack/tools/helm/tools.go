//go:build tools

// Package tools pins Helm so `go mod tidy` keeps what its command needs.
package tools

import _ "helm.sh/helm/v4/pkg/cmd"
