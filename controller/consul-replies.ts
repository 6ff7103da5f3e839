// The Consul replies the controller reads, typed: data only (only the fields
// the controller reads). The pure core imports this module, never the client.

export interface UpstreamRegistration {
  DestinationType?: "service" | "prepared_query" | "";
  DestinationName: string;
  DestinationNamespace?: string;
  DestinationPartition?: string;
  Datacenter?: string;
  LocalBindAddress?: string;
  LocalBindPort?: number;
  Config?: Record<string, unknown>;
}

export interface ProxyRegistration {
  DestinationServiceName: string;
  DestinationServiceID?: string;
  LocalServiceAddress?: string;
  LocalServicePort?: number;
  Config?: Record<string, unknown> | null;
  Upstreams?: UpstreamRegistration[] | null;
}

export interface AgentServiceRegistration {
  ID: string;
  Service: string;
  Kind?: string;
  Address: string;
  Port: number;
  Proxy?: ProxyRegistration;
  Datacenter?: string;
  Namespace?: string;
  Partition?: string;
  ContentHash?: string;
}

export interface CaRoot {
  ID: string;
  Name?: string;
  RootCert: string;
  IntermediateCerts?: string[] | null;
  Active: boolean;
}

export interface CaRoots {
  ActiveRootID: string;
  TrustDomain: string;
  Roots: CaRoot[] | null;
}

export interface LeafCertificate {
  SerialNumber: string;
  CertPEM: string;
  PrivateKeyPEM: string;
  Service: string;
  ServiceURI: string;
  ValidAfter: string;
  ValidBefore: string;
  ModifyIndex?: number;
}

export interface ServiceInstanceEntry {
  Node: { Node: string; Address: string; Datacenter?: string };
  Service: { ID: string; Service: string; Address: string; Port: number; Kind?: string };
  Checks?: { Status: string; CheckID: string }[];
}

export interface PreparedQueryResult {
  Service: string;
  Nodes: ServiceInstanceEntry[] | null;
  Datacenter: string;
}

/** The intentions matching a destination, and the index they were read at. */
export interface IntentionsAtIndex {
  byDestination: Record<string, Intention[] | null>;
  /** X-Consul-Index of the reply: the authorizer is asked to have seen at least this one. */
  index: number;
}

export interface Intention {
  ID?: string;
  SourceName: string;
  DestinationName: string;
  Action?: "allow" | "deny";
  Permissions?: unknown[] | null;
  Precedence?: number;
  ModifyIndex?: number;
}

/** One reply of an endpoint, with what a blocking query needs to continue. */
export interface ConsulPage<T> {
  value: T;
  /** X-Consul-Index, when the endpoint is index-blocking. */
  index?: number;
  /** X-Consul-ContentHash, when the endpoint is hash-blocking. */
  contentHash?: string;
}

/** Where a blocking query resumes: an index or a content hash, and how long to wait. */
export interface BlockingCursor {
  index?: number;
  hash?: string;
  waitSeconds?: number;
}
