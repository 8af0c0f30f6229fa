// middle, the Go version: a Gin service, `middle PORT BACK_PORT` (Debian's Gin, GOPATH mode:
// GO111MODULE=off GOPATH=/usr/share/gocode).
//
// Same routes as middle.py: /propagate[/tag] copies the inbound traceparent (and tracestate)
// to its call to back /work/propagate[/tag]; /drop[/tag] calls back with no trace headers;
// /restart[/tag] calls back with a freshly minted random traceparent; /spawn[/tag] drops the
// trace headers too, but calls back from a goroutine started by a goroutine the handler
// starts (a worker of a worker), and waits for it. The client keeps its connections to back
// alive (Go's default transport), as real Go services do.
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

	"github.com/gin-gonic/gin"
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

// callBack calls back /work/<route>[/<tag>] with `hdr`; returns the status to answer with and
// the body.
func callBack(route, tag string, hdr http.Header) (int, string) {
	url := fmt.Sprintf("http://127.0.0.1:%s/work/%s", back, route)
	if tag != "" {
		url += "/" + tag
	}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 500, err.Error()
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return 502, err.Error()
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	status := 200
	if resp.StatusCode != 200 {
		status = 502
	}
	return status, fmt.Sprintf("%s -> back %d\n", route, resp.StatusCode)
}

func handle(c *gin.Context) {
	name := c.Param("route")
	tag := strings.TrimPrefix(c.Param("tag"), "/")
	hdr := http.Header{}
	switch name {
	case "propagate":
		for _, k := range []string{"Traceparent", "Tracestate"} {
			if v := c.GetHeader(k); v != "" {
				hdr.Set(k, v)
			}
		}
	case "drop":
	case "spawn":
		type answer struct {
			status int
			body   string
		}
		done := make(chan answer)
		go func() {
			inner := make(chan answer)
			go func() {
				status, body := callBack(name, tag, hdr)
				inner <- answer{status, body}
			}()
			done <- <-inner
		}()
		a := <-done
		c.String(a.status, a.body)
		return
	case "restart":
		hdr.Set("Traceparent", "00-"+randHex(16)+"-"+randHex(8)+"-01")
	default:
		c.String(404, "no route %s\n", name)
		return
	}
	status, body := callBack(name, tag, hdr)
	c.String(status, body)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: middle PORT BACK_PORT")
		os.Exit(2)
	}
	back = os.Args[2]
	addr := "127.0.0.1:" + os.Args[1]
	gin.SetMode(gin.ReleaseMode)
	router := gin.New()
	router.GET("/:route", handle)
	router.GET("/:route/*tag", handle)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready", os.Args[1])
	srv := &http.Server{Handler: router, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
