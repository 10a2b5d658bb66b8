// Command baseline is the benchmark's yardstick: a RemoteAssistance reconciler written the usual
// Go way, with controller-runtime and the official huaweicloud-sdk-go-v3 Workspace client. It
// holds a finalizer of its own and, when an object is deleted, calls CancelRemoteAssistance and
// removes the finalizer; nothing else (no status, no Events, no invitation Secret).
//
// It is what a competent team would write in an afternoon: a cached client, the SDK's client
// per project reused across reconciles, the same number of concurrent reconciles as the operator
// under test, and controller-runtime's default rate-limited requeue on errors.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sync"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/basic"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/config"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/sdkerr"
	workspace "github.com/huaweicloud/huaweicloud-sdk-go-v3/services/workspace/v2"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/workspace/v2/model"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

const finalizer = "baseline.workspace.assist.dev/cancel"

var gvk = schema.GroupVersionKind{Group: "workspace.assist.dev", Version: "v1alpha1", Kind: "RemoteAssistance"}

type reconciler struct {
	client.Client
	endpoint string
	ak, sk   string

	mu      sync.Mutex
	clients map[string]*workspace.WorkspaceClient
}

// workspaceClient returns the SDK client of a project, built once.
func (r *reconciler) workspaceClient(projectID string) (*workspace.WorkspaceClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.clients[projectID]; ok {
		return c, nil
	}
	credentials, err := basic.NewCredentialsBuilder().WithAk(r.ak).WithSk(r.sk).WithProjectId(projectID).SafeBuild()
	if err != nil {
		return nil, err
	}
	hc, err := workspace.WorkspaceClientBuilder().
		WithEndpoints([]string{r.endpoint}).
		WithCredential(credentials).
		WithHttpConfig(config.DefaultHttpConfig().WithIgnoreSSLVerification(false)).
		SafeBuild()
	if err != nil {
		return nil, err
	}
	c := workspace.NewWorkspaceClient(hc)
	r.clients[projectID] = c
	return c, nil
}

func (r *reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ra := &unstructured.Unstructured{}
	ra.SetGroupVersionKind(gvk)
	if err := r.Get(ctx, req.NamespacedName, ra); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if ra.GetDeletionTimestamp().IsZero() {
		if controllerutil.AddFinalizer(ra, finalizer) {
			return ctrl.Result{}, r.Update(ctx, ra)
		}
		return ctrl.Result{}, nil
	}
	if !controllerutil.ContainsFinalizer(ra, finalizer) {
		return ctrl.Result{}, nil
	}
	projectID, _, _ := unstructured.NestedString(ra.Object, "spec", "projectId")
	desktopID, _, _ := unstructured.NestedString(ra.Object, "spec", "desktopId")
	wc, err := r.workspaceClient(projectID)
	if err != nil {
		return ctrl.Result{}, err
	}
	if _, err := wc.CancelRemoteAssistance(&model.CancelRemoteAssistanceRequest{DesktopId: desktopID}); err != nil {
		var apiErr *sdkerr.ServiceResponseError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
			return ctrl.Result{}, fmt.Errorf("cancelling the remote assistance of %s: %w", desktopID, err)
		}
	}
	controllerutil.RemoveFinalizer(ra, finalizer)
	return ctrl.Result{}, r.Update(ctx, ra)
}

func main() {
	var (
		namespace   = flag.String("namespace", "", "the namespace to watch")
		endpoint    = flag.String("endpoint", "", "the Workspace endpoint (the simulator)")
		concurrency = flag.Int("concurrency", 16, "concurrent reconciles")
	)
	flag.Parse()
	ak, sk := os.Getenv("BASELINE_AK"), os.Getenv("BASELINE_SK")
	if *namespace == "" || *endpoint == "" || ak == "" || sk == "" {
		fmt.Fprintln(os.Stderr, "baseline needs -kubeconfig (controller-runtime's flag), -namespace, -endpoint, BASELINE_AK and BASELINE_SK")
		os.Exit(2)
	}
	restConfig, err := ctrl.GetConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The same client-side limits as the operator under test (none to speak of).
	restConfig.QPS, restConfig.Burst = 1000, 2000
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Cache: cache.Options{DefaultNamespaces: map[string]cache.Config{*namespace: {}}},
		// Reads from the informer cache, as a typed (kubebuilder) reconciler's are: unstructured
		// objects are read from the API server unless asked otherwise.
		Client:  client.Options{Cache: &client.CacheOptions{Unstructured: true}},
		Metrics: metricsserver.Options{BindAddress: "0"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	watched := &unstructured.Unstructured{}
	watched.SetGroupVersionKind(gvk)
	r := &reconciler{Client: mgr.GetClient(), endpoint: *endpoint, ak: ak, sk: sk, clients: map[string]*workspace.WorkspaceClient{}}
	if err := ctrl.NewControllerManagedBy(mgr).For(watched).WithOptions(controller.Options{MaxConcurrentReconciles: *concurrency}).Complete(r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("BASELINE_READY")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
