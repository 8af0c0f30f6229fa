// A net/http server that also has a client: the functions the Go probes attach to
// (serverHandler.ServeHTTP, (*Transport).roundTrip, runtime.newproc1, crypto/tls's
// (*Conn).Write and Read, linked by net/http) are all in it. Usage: server PORT [URL].
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	if len(os.Args) > 2 {
		if resp, err := http.Get(os.Args[2]); err == nil {
			resp.Body.Close()
		}
	}
	if err := http.ListenAndServe("127.0.0.1:"+os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
