// A Lambda function in Go that serves the Lambda Runtime API with the standard library alone
// (Debian's Go has no aws-lambda-go package; the loop below is what that library does).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"
)

// Event is the part of the function URL event this function reads.
type Event struct {
	RawPath               string            `json:"rawPath"`
	QueryStringParameters map[string]string `json:"queryStringParameters"`
}

// Response is what the handler returns; it becomes the JSON body of a 200.
type Response struct {
	Message     string `json:"message"`
	Path        string `json:"path"`
	RequestID   string `json:"requestId"`
	RemainingMs int64  `json:"remainingMs"`
}

func handler(event Event, requestID string, deadline time.Time) (*Response, error) {
	name := event.QueryStringParameters["name"]
	if name == "" {
		name = "world"
	}
	if name == "error" {
		return nil, fmt.Errorf("no greeting for %q", name)
	}
	fmt.Printf("greeting %s\n", name)
	return &Response{"Hello from Go, " + name + "!", event.RawPath, requestID,
		time.Until(deadline).Milliseconds()}, nil
}

func main() {
	api := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime"
	for {
		next, err := http.Get(api + "/invocation/next")
		if err != nil {
			log.Fatal(err)
		}
		body, err := io.ReadAll(next.Body)
		next.Body.Close()
		if err != nil {
			log.Fatal(err)
		}
		id := next.Header.Get("Lambda-Runtime-Aws-Request-Id")
		ms, _ := strconv.ParseInt(next.Header.Get("Lambda-Runtime-Deadline-Ms"), 10, 64)

		var event Event
		var result *Response
		if err = json.Unmarshal(body, &event); err == nil {
			result, err = handler(event, id, time.UnixMilli(ms))
		}
		url, payload := api+"/invocation/"+id+"/response", []byte(nil)
		if err != nil {
			url = api + "/invocation/" + id + "/error"
			payload, _ = json.Marshal(map[string]string{
				"errorMessage": err.Error(), "errorType": "GoError"})
		} else {
			payload, _ = json.Marshal(result)
		}
		posted, err := http.Post(url, "application/json", bytes.NewReader(payload))
		if err != nil {
			log.Fatal(err)
		}
		io.Copy(io.Discard, posted.Body)
		posted.Body.Close()
	}
}
