// sco-opa-authz: a policy engine behind Envoy's ext_authz v3 gRPC API, for the e2e suite.
// Each Check request is turned into JSON (protojson) and evaluated with Open Policy Agent's
// rego against the policy in $POLICY; the query data.spark.authz.result must give
// {"allow": bool, "reason": string}.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net"
	"os"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/rego"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
)

type authorizer struct {
	authv3.UnimplementedAuthorizationServer
	query rego.PreparedEvalQuery
}

func (a *authorizer) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	raw, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	var input map[string]any
	if err := json.Unmarshal(raw, &input); err != nil {
		return nil, err
	}
	allowed, reason := false, "denied by policy"
	results, err := a.query.Eval(ctx, rego.EvalInput(input))
	if err != nil {
		reason = "policy evaluation failed: " + err.Error()
	} else if len(results) > 0 && len(results[0].Expressions) > 0 {
		if verdict, ok := results[0].Expressions[0].Value.(map[string]any); ok {
			allowed, _ = verdict["allow"].(bool)
			if text, ok := verdict["reason"].(string); ok && text != "" {
				reason = text
			}
		}
	}
	log.Printf("check: allow=%v reason=%q", allowed, reason)
	if allowed {
		return &authv3.CheckResponse{Status: &status.Status{Code: int32(codes.OK)}}, nil
	}
	return &authv3.CheckResponse{Status: &status.Status{Code: int32(codes.PermissionDenied), Message: reason}}, nil
}

func main() {
	listen := flag.String("listen", "0.0.0.0:9191", "gRPC listen address")
	flag.Parse()
	policy := os.Getenv("POLICY")
	if policy == "" {
		log.Fatal("POLICY (rego text) is empty")
	}
	query, err := rego.New(rego.Query("data.spark.authz.result"), rego.Module("policy.rego", policy)).PrepareForEval(context.Background())
	if err != nil {
		log.Fatalf("the policy does not compile: %v", err)
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	server := grpc.NewServer()
	authv3.RegisterAuthorizationServer(server, &authorizer{query: query})
	log.Printf("ext_authz (OPA) listening on %s", *listen)
	if err := server.Serve(listener); err != nil {
		log.Fatal(err)
	}
}
