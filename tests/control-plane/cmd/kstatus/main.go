// Command kstatus computes the kstatus status (sigs.k8s.io/cli-utils, the library Flux and
// kpt use) of Kubernetes objects read as a JSON array from standard input, and prints one JSON
// object per input object: {"name": ..., "status": "InProgress|Current|Failed|...", "message": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	var objects []map[string]interface{}
	// Decode as Kubernetes does: whole numbers become int64.
	if err := utiljson.Unmarshal(input, &objects); err != nil {
		fail("stdin is not a JSON array of objects: %v", err)
	}
	var results []result
	for _, o := range objects {
		u := &unstructured.Unstructured{Object: o}
		r, err := status.Compute(u)
		if err != nil {
			fail("computing the status of %s: %v", u.GetName(), err)
		}
		results = append(results, result{Name: u.GetName(), Status: r.Status.String(), Message: r.Message})
	}
	out, _ := json.Marshal(results)
	fmt.Println(string(out))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
