from tests.pgdoor.conftest import Door


def test_select(door: Door) -> None:
    with door.connect() as c:
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (10,)
