//go:build tools

// Package tools pins etcd's server so `go mod tidy` keeps what its command needs.
package tools

import _ "go.etcd.io/etcd/server/v3/etcdmain"
