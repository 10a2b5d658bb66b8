package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// stableIdentity is what a client keeps across restarts of the control plane on the same -dir:
// the server's CA and serving certificate, and an admin token. With -port, the apiserver is
// reached through a forwarder on that fixed loopback port, so a restarted control plane is the
// same server to its clients: same address, same certificate, same credentials.
type stableIdentity struct {
	caPEM    []byte
	certFile string
	keyFile  string
	token    string
	// tokenFile is a static token file (--token-auth-file) granting token to group system:masters.
	tokenFile string
}

// loadOrCreateIdentity reads the identity kept in dir/identity, creating it on first use.
func loadOrCreateIdentity(dir string) (*stableIdentity, error) {
	idDir := filepath.Join(dir, "identity")
	id := &stableIdentity{
		certFile:  filepath.Join(idDir, "serving.crt"),
		keyFile:   filepath.Join(idDir, "serving.key"),
		tokenFile: filepath.Join(idDir, "tokens.csv"),
	}
	caFile, tokenPlain := filepath.Join(idDir, "ca.crt"), filepath.Join(idDir, "token")
	if ca, err := os.ReadFile(caFile); err == nil {
		token, err := os.ReadFile(tokenPlain)
		if err != nil {
			return nil, err
		}
		id.caPEM, id.token = ca, string(token)
		return id, nil
	}
	if err := os.MkdirAll(idDir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "control-plane-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	servingTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "control-plane"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	servingDER, err := x509.CreateCertificate(rand.Reader, servingTemplate, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	tokenBytes := make([]byte, 24)
	if _, err := rand.Read(tokenBytes); err != nil {
		return nil, err
	}
	id.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	id.token = hex.EncodeToString(tokenBytes)
	files := map[string][]byte{
		id.certFile:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: servingDER}),
		id.keyFile:   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		id.tokenFile: []byte(fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", id.token)),
		tokenPlain:   []byte(id.token),
		caFile:       id.caPEM, // written last: its presence means the identity is complete
	}
	for _, name := range []string{id.certFile, id.keyFile, id.tokenFile, tokenPlain, caFile} {
		if err := os.WriteFile(name, files[name], 0o600); err != nil {
			return nil, err
		}
	}
	return id, nil
}

// apiserverFlags are the kube-apiserver flags that make it present this identity.
func (id *stableIdentity) apiserverFlags() []string {
	return []string{
		"--tls-cert-file=" + id.certFile,
		"--tls-private-key-file=" + id.keyFile,
		"--token-auth-file=" + id.tokenFile,
		// The test server points the peer proxy's CA at the self-signed certificate it generates
		// when no serving certificate is given; with ours there is none (and no peers to proxy to).
		"--feature-gates=UnknownVersionInteroperabilityProxy=false",
	}
}

// forwarder accepts connections on a fixed loopback port and pipes each to the apiserver.
type forwarder struct {
	listener net.Listener
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// startForwarder listens on 127.0.0.1:port and forwards to target (host:port).
func startForwarder(port int, target string) (*forwarder, error) {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, fmt.Errorf("listening on the stable port %d: %w", port, err)
	}
	f := &forwarder{listener: l, conns: map[net.Conn]struct{}{}}
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			go f.pipe(client, target)
		}
	}()
	return f, nil
}

func (f *forwarder) pipe(client net.Conn, target string) {
	server, err := net.Dial("tcp", target)
	if err != nil {
		_ = client.Close()
		return
	}
	f.track(client, true)
	f.track(server, true)
	done := make(chan struct{}, 2)
	copyHalf := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go copyHalf(server, client)
	go copyHalf(client, server)
	<-done
	_ = client.Close()
	_ = server.Close()
	f.track(client, false)
	f.track(server, false)
}

func (f *forwarder) track(c net.Conn, open bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if open {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
}

// stop closes the listener and every forwarded connection.
func (f *forwarder) stop() {
	_ = f.listener.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		_ = c.Close()
	}
}
