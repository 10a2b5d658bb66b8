package main

import (
	"fmt"
	"os"
	"sync"

	"k8s.io/apiserver/pkg/storage/storagebackend"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	apiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
)

// defaultAPIServerFlags are the flags upstream's integration tests use when no controllers run,
// plus RBAC so that tests can prove the operator's ClusterRole.
var defaultAPIServerFlags = []string{
	"--authorization-mode=RBAC",
	// No controller-manager: nobody would reconcile the kubernetes Service endpoints,
	"--endpoint-reconciler-type=none",
	// mint default service-account tokens,
	"--disable-admission-plugins=ServiceAccount",
	// or remove the orphan/foregroundDeletion finalizers that only the garbage collector handles.
	"--enable-garbage-collector=false",
}

// runningAPIServer is the in-process kube-apiserver.
type runningAPIServer struct {
	config *restclient.Config
	stop   func()
}

// startAPIServer starts kube-apiserver through the upstream test server, storing in etcd at etcdURL.
func startAPIServer(etcdURL string, extraFlags []string) (*runningAPIServer, error) {
	storage := storagebackend.NewDefaultConfig("/registry", nil)
	storage.Transport.ServerList = []string{etcdURL}

	tb := &harnessTB{name: "control-plane"}
	flags := append(append([]string{}, defaultAPIServerFlags...), extraFlags...)
	server, err := apiservertesting.StartTestServer(tb, apiservertesting.NewDefaultTestServerOptions(), flags, storage)
	if err != nil {
		tb.runCleanups()
		return nil, err
	}
	return &runningAPIServer{
		config: server.ClientConfig,
		stop: func() {
			server.TearDownFn()
			tb.runCleanups()
		},
	}, nil
}

// writeKubeconfig writes an admin kubeconfig for cfg. The loopback certificate is issued for the
// name in cfg.TLSClientConfig.ServerName, which the kubeconfig carries as tls-server-name.
func writeKubeconfig(path string, cfg *restclient.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["control-plane"] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthorityData: cfg.TLSClientConfig.CAData,
		TLSServerName:            cfg.TLSClientConfig.ServerName,
	}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["admin"] = &clientcmdapi.Context{Cluster: "control-plane", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "admin"
	if len(cfg.TLSClientConfig.CAData) == 0 || cfg.BearerToken == "" {
		return fmt.Errorf("the test server returned no CA data or no bearer token")
	}
	return clientcmd.WriteToFile(*kc, path)
}

// writeStableKubeconfig writes an admin kubeconfig for the stable address and identity.
func writeStableKubeconfig(path, server string, id *stableIdentity) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["control-plane"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: id.caPEM}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: id.token}
	kc.Contexts["admin"] = &clientcmdapi.Context{Cluster: "control-plane", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "admin"
	return clientcmd.WriteToFile(*kc, path)
}

// harnessTB implements ktesting.TB outside of `go test`: the upstream test server wants one for
// logging, temporary directories and cleanup callbacks.
type harnessTB struct {
	name     string
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (t *harnessTB) Attr(key, value string) {}
func (t *harnessTB) Chdir(dir string) {
	if err := os.Chdir(dir); err != nil {
		t.Fatalf("chdir %s: %v", dir, err)
	}
}
func (t *harnessTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

// runCleanups runs the registered callbacks, last registered first, like the testing package.
func (t *harnessTB) runCleanups() {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		f()
	}
}
func (t *harnessTB) Error(args ...any) { t.Log(args...); t.Fail() }
func (t *harnessTB) Errorf(format string, args ...any) {
	t.Logf(format, args...)
	t.Fail()
}
func (t *harnessTB) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}
func (t *harnessTB) FailNow() {
	fmt.Fprintln(os.Stderr, "control-plane: fatal error in the test server")
	os.Exit(1)
}
func (t *harnessTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *harnessTB) Fatal(args ...any) { t.Error(args...); t.FailNow() }
func (t *harnessTB) Fatalf(format string, args ...any) {
	t.Errorf(format, args...)
	t.FailNow()
}
func (t *harnessTB) Helper()         {}
func (t *harnessTB) Log(args ...any) { logf("%s", fmt.Sprint(args...)) }
func (t *harnessTB) Logf(format string, args ...any) {
	logf(format, args...)
}
func (t *harnessTB) Name() string { return t.name }
func (t *harnessTB) Setenv(key, value string) {
	if err := os.Setenv(key, value); err != nil {
		t.Fatalf("setenv %s: %v", key, err)
	}
}
func (t *harnessTB) Skip(args ...any) { t.Fatal(append([]any{"skip is not supported:"}, args...)...) }
func (t *harnessTB) Skipf(format string, args ...any) {
	t.Fatalf("skip is not supported: "+format, args...)
}
func (t *harnessTB) SkipNow()      { t.Fatal("skip is not supported") }
func (t *harnessTB) Skipped() bool { return false }
func (t *harnessTB) TempDir() string {
	d, err := os.MkdirTemp("", "control-plane-tb-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}
