//go:build tools

// Package tools records the Kubernetes packages whose commands hack/build-tools.sh builds, so
// that `go mod tidy` keeps every module they need pinned in go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubectl/pkg/cmd"
)
