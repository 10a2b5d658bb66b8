package main

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// embeddedEtcd is a single-member etcd running inside this process.
type embeddedEtcd struct {
	server    *embed.Etcd
	clientURL string
}

// startEtcd starts etcd on free loopback ports with its data in dataDir, the way
// k8s.io/apiserver/pkg/storage/etcd3/testserver does it (no fsync: test data only).
func startEtcd(dataDir string, keepData bool, logOut io.Writer) (*embeddedEtcd, error) {
	if !keepData {
		if err := os.RemoveAll(dataDir); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}

	cfg := embed.NewConfig()
	cfg.Name = "control-plane"
	cfg.Dir = dataDir
	cfg.UnsafeNoFsync = true
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(errorLogger(logOut))
	if keepData {
		if _, err := os.Stat(dataDir + "/member"); err == nil {
			cfg.ClusterState = embed.ClusterStateFlagExisting
		}
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd took more than 60s to become ready")
	}
	return &embeddedEtcd{server: e, clientURL: clientURL.String()}, nil
}

func (e *embeddedEtcd) stop() {
	e.server.Close()
}

// errorLogger logs etcd's errors only.
func errorLogger(out io.Writer) *zap.Logger {
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	core := zapcore.NewCore(enc, zapcore.AddSync(out), zapcore.ErrorLevel)
	return zap.New(core).Named("etcd")
}

// freePorts asks the kernel for n free loopback ports. The listeners are closed before etcd binds
// them, so another process could take one in between; on loopback in a test run that is unlikely.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
