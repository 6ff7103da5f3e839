import * as der from "./der";
import * as spiffe from "./spiffe";
export const version = "0.1.0";
export { der, spiffe };
