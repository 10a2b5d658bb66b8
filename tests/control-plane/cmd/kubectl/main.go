// Command kubectl is the real kubectl of the pinned Kubernetes release (k8s.io/kubectl), built
// from Go modules so that tests can run `kubectl apply --dry-run=server -k ...` against the test
// control plane without downloading a binary.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
)

func main() {
	os.Exit(cli.Run(cmd.NewDefaultKubectlCommand()))
}
