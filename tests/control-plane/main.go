// Command control-plane runs a real kube-apiserver with an embedded etcd, in one process, for the
// project's integration tests and its local demo.
//
// What is there: the full kube-apiserver of the pinned Kubernetes release (every built-in API,
// CustomResourceDefinitions with structural-schema and CEL validation, the status subresource,
// finalizers and deletionTimestamp, watches, server-side apply, RBAC authorization, impersonation,
// the TokenRequest API for service accounts created by hand), backed by etcd 3.6 embedded in the
// same process.
//
// What is not there: no kube-controller-manager, no scheduler, no kubelet. So there is no garbage
// collector (ownerReferences are recorded but dependents are never deleted, and the apiserver is
// told not to add the orphan/foregroundDeletion finalizers that only the collector would remove),
// no namespace controller (a deleted namespace stays Terminating forever, although the objects in
// it are deleted by their own DELETE calls only), and no service-account or token controllers (no
// "default" ServiceAccount, no kube-root-ca.crt ConfigMap). Use a fresh namespace per test.
//
// Protocol: when the apiserver is healthy the harness writes a kubeconfig (admin identity: the
// loopback bearer token of group system:masters) and prints exactly one line on stdout:
//
//	CONTROL_PLANE_READY {"server":"https://127.0.0.1:PORT","kubeconfig":"PATH","pid":PID,...}
//
// With -port N (and the same -dir), the server keeps its address, certificate and admin token
// across restarts: with -keep-data, a restart is the same server on the same data to its clients
// (the outage tests stop it and start it again under a running operator).
//
// It shuts down cleanly on SIGTERM, on SIGINT, and when its standard input reaches end of file, so
// it never outlives the process that started it with a pipe on stdin.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

func main() {
	var (
		workDir     = flag.String("dir", "", "directory for the kubeconfig, etcd data and logs (default: a new temporary directory, removed on exit)")
		keepData    = flag.Bool("keep-data", false, "keep etcd data in -dir across restarts (default: start from an empty store)")
		verbose     = flag.Bool("verbose", false, "log the apiserver and etcd to stderr (default: to DIR/control-plane.log)")
		watchStdin  = flag.Bool("exit-on-stdin-eof", true, "shut down when standard input reaches end of file")
		extraFlagsJ = flag.String("apiserver-flags", "", "extra kube-apiserver flags, as a JSON array of strings")
		stablePort  = flag.Int("port", 0, "serve on this fixed loopback port with an identity (CA, serving certificate, admin token) kept in -dir, so that a restart with -keep-data is the same server to its clients (default: a new port and identity each start)")
	)
	// The Kubernetes test packages register klog's -v and -vmodule on the default flag set already.
	flag.Parse()

	start := time.Now()
	dir, removeDir, err := prepareDir(*workDir)
	if err != nil {
		fatal("preparing the work directory: %v", err)
	}
	// The test server makes temporary directories of its own (certificates): they go inside the
	// work directory, so that nothing is left in the system's temporary directory, even when the
	// harness is killed before it can clean up.
	scratch := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		fatal("preparing the scratch directory: %v", err)
	}
	_ = os.Setenv("TMPDIR", scratch)
	logOut, err := configureLogging(dir, *verbose)
	if err != nil {
		fatal("configuring logging: %v", err)
	}

	var extra []string
	if *extraFlagsJ != "" {
		if err := json.Unmarshal([]byte(*extraFlagsJ), &extra); err != nil {
			fatal("-apiserver-flags is not a JSON array of strings: %v", err)
		}
	}

	// The parent may be gone when the harness shuts down: a write to its closed stderr pipe must
	// not kill the harness before it has removed its temporary directory.
	signal.Ignore(syscall.SIGPIPE)

	stop := make(chan string, 4)
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() { stop <- "signal " + (<-signals).String() }()
	if *watchStdin {
		go func() {
			_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
			stop <- "standard input closed"
		}()
	}

	var identity *stableIdentity
	if *stablePort != 0 {
		if identity, err = loadOrCreateIdentity(dir); err != nil {
			fatal("preparing the stable identity: %v", err)
		}
		extra = append(extra, identity.apiserverFlags()...)
	}

	etcd, err := startEtcd(filepath.Join(dir, "etcd"), *keepData, logOut)
	if err != nil {
		fatal("starting embedded etcd: %v", err)
	}
	etcdReady := time.Since(start)

	api, err := startAPIServer(etcd.clientURL, extra)
	if err != nil {
		etcd.stop()
		fatal("starting kube-apiserver: %v", err)
	}

	kubeconfig := filepath.Join(dir, "kubeconfig")
	server := api.config.Host
	var fwd *forwarder
	if identity != nil {
		target := strings.TrimPrefix(api.config.Host, "https://")
		if fwd, err = startForwarder(*stablePort, target); err != nil {
			api.stop()
			etcd.stop()
			fatal("%v", err)
		}
		server = fmt.Sprintf("https://127.0.0.1:%d", *stablePort)
		err = writeStableKubeconfig(kubeconfig, server, identity)
	} else {
		err = writeKubeconfig(kubeconfig, api.config)
	}
	if err != nil {
		api.stop()
		etcd.stop()
		fatal("writing the kubeconfig: %v", err)
	}

	ready, _ := json.Marshal(readyLine{
		Server:       server,
		Kubeconfig:   kubeconfig,
		Dir:          dir,
		PID:          os.Getpid(),
		EtcdMillis:   etcdReady.Milliseconds(),
		StartMillis:  time.Since(start).Milliseconds(),
		EtcdEndpoint: etcd.clientURL,
	})
	fmt.Printf("CONTROL_PLANE_READY %s\n", ready)
	_ = os.Stdout.Sync()

	reason := <-stop
	fmt.Fprintf(os.Stderr, "control-plane: shutting down (%s)\n", reason)
	// A second signal or a hung shutdown must still end the process.
	go func() {
		select {
		case <-signals:
		case <-time.After(30 * time.Second):
		}
		fmt.Fprintln(os.Stderr, "control-plane: forced exit")
		os.Exit(1)
	}()
	if fwd != nil {
		fwd.stop()
	}
	api.stop()
	etcd.stop()
	klog.Flush()
	_ = os.RemoveAll(scratch)
	if removeDir {
		_ = os.RemoveAll(dir)
	}
	fmt.Fprintln(os.Stderr, "control-plane: stopped")
}

// readyLine is the JSON document on the CONTROL_PLANE_READY line.
type readyLine struct {
	Server       string `json:"server"`
	Kubeconfig   string `json:"kubeconfig"`
	Dir          string `json:"dir"`
	PID          int    `json:"pid"`
	EtcdMillis   int64  `json:"etcdMillis"`
	StartMillis  int64  `json:"startMillis"`
	EtcdEndpoint string `json:"etcdEndpoint"`
}

func prepareDir(dir string) (string, bool, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "control-plane-")
		return d, true, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false, err
	}
	return abs, false, os.MkdirAll(abs, 0o700)
}

// configureLogging keeps klog quiet: to a file in dir unless verbose.
func configureLogging(dir string, verbose bool) (io.Writer, error) {
	if verbose {
		return os.Stderr, nil
	}
	f, err := os.OpenFile(filepath.Join(dir, "control-plane.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("logtostderr", "false")
	_ = klogFlags.Set("alsologtostderr", "false")
	_ = klogFlags.Set("stderrthreshold", "FATAL")
	klog.SetOutput(f)
	return f, nil
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "control-plane: "+format+"\n", args...)
	os.Exit(1)
}

// logf writes a harness message to klog's output (the log file unless -verbose).
func logf(format string, args ...any) {
	klog.InfoDepth(1, fmt.Sprintf(format, args...))
}
