// middle, the Go net/http version: `middle PORT BACK_PORT` (std lib only, GOPATH mode).
//
// Same routes as middle.py: /propagate[/tag] copies the inbound traceparent (and tracestate)
// to its call to back /work/propagate[/tag]; /drop[/tag] calls back with no trace headers;
// /restart[/tag] calls back with a freshly minted random traceparent; /spawn[/tag] drops the
// trace headers too, but calls back from a goroutine started by a goroutine the handler
// starts (a worker of a worker), and waits for it. The client keeps its
// connections to back alive (Go's default transport), as real Go services do.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

var (
	back   string
	client = &http.Client{Timeout: 10 * time.Second}
)

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func callBack(w http.ResponseWriter, route, tag string, hdr http.Header) {
	url := fmt.Sprintf("http://127.0.0.1:%s/work/%s", back, route)
	if tag != "" {
		url += "/" + tag
	}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		http.Error(w, err.Error(), 502)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		w.WriteHeader(502)
	}
	fmt.Fprintf(w, "%s -> back %d\n", route, resp.StatusCode)
}

// route splits "/drop/7" into ("drop", "7").
func route(path string) (string, string) {
	parts := strings.SplitN(strings.TrimPrefix(path, "/"), "/", 2)
	if len(parts) == 2 {
		return parts[0], parts[1]
	}
	return parts[0], ""
}

func handle(w http.ResponseWriter, r *http.Request) {
	name, tag := route(r.URL.Path)
	hdr := http.Header{}
	switch name {
	case "propagate":
		for _, k := range []string{"Traceparent", "Tracestate"} {
			if v := r.Header.Get(k); v != "" {
				hdr.Set(k, v)
			}
		}
	case "drop":
	case "spawn":
		done := make(chan struct{})
		go func() {
			inner := make(chan struct{})
			go func() {
				callBack(w, name, tag, hdr)
				close(inner)
			}()
			<-inner
			close(done)
		}()
		<-done
		return
	case "restart":
		hdr.Set("Traceparent", "00-"+randHex(16)+"-"+randHex(8)+"-01")
	default:
		http.NotFound(w, r)
		return
	}
	callBack(w, name, tag, hdr)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: middle PORT BACK_PORT")
		os.Exit(2)
	}
	back = os.Args[2]
	addr := "127.0.0.1:" + os.Args[1]
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready", os.Args[1])
	srv := &http.Server{Handler: http.HandlerFunc(handle), ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
