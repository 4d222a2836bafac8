# An application written against HashiCorp Vault with hvac (Python),
# run unchanged against "moatless server". Prints one JSON object with
# what it saw; the Go test checks it.
import base64, json, sys

import hvac

url, cafile, role_id, secret_id = sys.argv[1:5]
out = {}
client = hvac.Client(url=url, verify=cafile)
login = client.auth.approle.login(role_id=role_id, secret_id=secret_id)
out["policies"] = login["auth"]["policies"]
out["authenticated"] = client.is_authenticated()

client.secrets.kv.v2.create_or_update_secret(path="orders/db", secret={"password": "from-hvac"}, mount_point="secret")
client.secrets.kv.v2.create_or_update_secret(path="orders/db", secret={"password": "from-hvac-2"}, mount_point="secret")
read = client.secrets.kv.v2.read_secret_version(path="orders/db", mount_point="secret")
out["kv_password"] = read["data"]["data"]["password"]
out["kv_version"] = read["data"]["metadata"]["version"]
old = client.secrets.kv.v2.read_secret_version(path="orders/db", version=1, mount_point="secret")
out["kv_v1_password"] = old["data"]["data"]["password"]

pt = base64.b64encode(b"4111 1111 1111 1111").decode()
ct = client.secrets.transit.encrypt_data(name="cards", plaintext=pt)["data"]["ciphertext"]
out["ciphertext_prefix"] = ct[:9]
dec = client.secrets.transit.decrypt_data(name="cards", ciphertext=ct)["data"]["plaintext"]
out["decrypted"] = base64.b64decode(dec).decode()

try:
    client.secrets.kv.v2.read_secret_version(path="payments/db", mount_point="secret")
    out["denied"] = "no"
except hvac.exceptions.Forbidden:
    out["denied"] = "forbidden"

out["lookup_self_policies"] = client.lookup_token()["data"]["policies"]
print(json.dumps(out))
