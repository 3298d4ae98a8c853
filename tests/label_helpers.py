"""What the labeling app's tests share: the password, a test app, a CSRF token, a login."""

from rlhf.label.app import create_app

PASSWORD = "correct horse"


def make_app(database, **options):
    application = create_app(database, **options)
    application.config["TESTING"] = True
    return application


def csrf_token(client) -> str:
    return client.get("/api/csrf").get_json()["csrf_token"]


def login(client, username="alice", password=PASSWORD, query="", **request_options):
    return client.post(f"/login{query}", data={"username": username, "password": password,
                                                "csrf_token": csrf_token(client)}, **request_options)
